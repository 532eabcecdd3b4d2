"""agentrun without a cluster: the Kubernetes API emulator and the dev stack.

- :mod:`agentrun_local.emulator`: a Kubernetes API server emulator (on kmock) that kopf,
  lightkube and kubectl talk to; the test bed and ``agentrun dev`` run on it.
- :mod:`agentrun_local.devstack`: ``agentrun dev`` and ``agentrun demo`` — the emulator, an
  embedded Redis and SQLite (or the real services), the operator, the workers and the gateway
  in one process, each component found by entry point.

Installed with the ``[local]`` extra (kmock, fakeredis). No other component imports this
package (import-linter: only tests and the dev stack use the emulator).
"""
