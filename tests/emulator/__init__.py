"""Tests of the Kubernetes API emulator (agentrun.emulator), with HTTP clients, kubectl and kopf."""
