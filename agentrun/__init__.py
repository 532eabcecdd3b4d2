"""agentrun: run AI agents in the background on Kubernetes.

This package is the shared contract between the operator (``agentrun_operator``) and the
worker (``agentrun_worker``): resource models and typed views (``views``), phases and
reasons, timestamps, Redis keys and the stream protocol, the broker message, the store, the
one way a run ends (``ending``), settings and the command line. It never imports either of
them (checked by import-linter in the test suite).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
