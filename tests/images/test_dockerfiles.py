"""The container images: linted with the real hadolint, and kept minimal and non-root.

No container engine runs on the development machines, so the images are not built here;
what can be checked without building is checked.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "operator" / "Dockerfile", ROOT / "worker" / "Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_finds_nothing(dockerfile: pathlib.Path) -> None:
    hadolint = pathlib.Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_is_multi_stage_non_root_and_copies_only_the_virtualenv(dockerfile: pathlib.Path) -> None:
    text = dockerfile.read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    final = text[text.rindex("\nFROM "):]
    assert "USER 10001:10001" in final
    assert [line for line in final.splitlines() if line.startswith("COPY")] == [
        "COPY --from=build /opt/agentrun /opt/agentrun"]
    assert "pip install" not in final and "apt-get" not in final


def test_every_copied_path_exists() -> None:
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile}: {source}"
