"""Tests of the Kubernetes API emulator (agentrun_local.emulator), with HTTP clients, kubectl and kopf."""
