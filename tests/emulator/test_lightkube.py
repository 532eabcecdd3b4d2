"""lightkube (the client of the operator, the worker and the CLI) against the emulator."""

from __future__ import annotations

import asyncio
import pathlib
import typing
from typing import Any

import lightkube
import lightkube.config.kubeconfig
import lightkube.core.exceptions
import lightkube.generic_resource
import lightkube.types
import pytest
from agentrun_local import emulator

from tests.emulator.conftest import widget

Widget = lightkube.generic_resource.create_namespaced_resource("example.com", "v1", "Widget", "widgets")


async def test_lightkube_create_patch_conflict_and_watch(server: emulator.EmulatorServer,
                                                          tmp_path: pathlib.Path) -> None:
    """lightkube's create, merge patch of /status carrying resourceVersion (the compare-and-swap
    of phase transitions), its 409 on a stale version, and its watch from a version all work."""
    config = lightkube.config.kubeconfig.KubeConfig.from_file(server.write_kubeconfig(tmp_path / "kubeconfig"))
    api = lightkube.AsyncClient(config=config, field_manager="tests")
    try:
        created = await api.create(Widget.from_dict(widget("w", size=1)))
        seen = created.metadata.resourceVersion if created.metadata else None
        patched: Any = await api.patch(Widget.Status, "w",
                                  {"metadata": {"resourceVersion": seen}, "status": {"phase": "Queued"}},
                                  namespace="default", patch_type=lightkube.types.PatchType.MERGE)
        assert patched.status == {"phase": "Queued"}
        with pytest.raises(lightkube.core.exceptions.ApiError) as refused:
            await api.patch(Widget.Status, "w", {"metadata": {"resourceVersion": seen}, "status": {"phase": "Running"}},
                            namespace="default", patch_type=lightkube.types.PatchType.MERGE)
        assert refused.value.status.code == 409

        async def first_event() -> tuple[str, Any]:
            async for kind, obj in api.watch(Widget, namespace="default", resource_version=seen):
                return kind, typing.cast(Any, obj).status
            raise AssertionError("the watch ended")

        assert await asyncio.wait_for(first_event(), 10) == ("MODIFIED", {"phase": "Queued"})
    finally:
        await api.close()
