"""An API emulator of a test's own (crds/ served, kubeconfig in the test's temp dir), for CLI
tests that need the Kubernetes API but no operator, broker or worker."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import lightkube
import lightkube.config.kubeconfig
import pytest
import yaml

from tests.e2e import harness


@pytest.fixture
def api(tmp_path: pathlib.Path) -> Iterator[tuple[lightkube.Client, pathlib.Path]]:
    """``(client, kubeconfig)`` of a fresh emulator, stopped after the test."""
    from agentrun_local import emulator

    crds = [yaml.safe_load(p.read_text()) for p in sorted((harness.ROOT / "crds").glob("*.yaml"))]
    server = emulator.EmulatorServer(crds=crds)
    server.start()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    client = lightkube.Client(config=lightkube.config.kubeconfig.KubeConfig.from_file(kubeconfig))
    try:
        yield client, kubeconfig
    finally:
        client.close()
        server.stop()
