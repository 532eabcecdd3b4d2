"""``helm upgrade`` rolls the workers and updates the CRDs.

The chart's default WorkerPool is a post-install hook (created once, never touched by an
upgrade), so it must not pin an image: a pool without ``spec.image`` gets the operator's
``AGENTRUN_WORKER_IMAGE``, which the chart sets on the operator's Deployment on every
upgrade; the restarted operator re-reconciles every pool (kopf's resume handler) and patches
its Deployment. Checked with the real ``helm template`` and the operator's pure Deployment
builder, release by release.
"""

from __future__ import annotations

from typing import Any

from agentrun_operator import config, deployments

from tests.chart.rendering import of_kind, only, render


def _worker_image_of(docs: list[dict[str, Any]]) -> str:
    operator = only(docs, "Deployment")
    [container] = operator["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return str(env["AGENTRUN_WORKER_IMAGE"])


def _as_stored(pool: dict[str, Any]) -> dict[str, Any]:
    pool["metadata"].update(uid="0a1b2c3d-0000-4000-8000-000000000001", namespace="agents")
    return pool


def test_the_default_pool_follows_the_worker_image_across_an_upgrade() -> None:
    # Given the chart installed at worker tag 1.0.0, then upgraded to 2.0.0
    releases = [render("--set", f"workers.image.tag={tag}") for tag in ("1.0.0", "2.0.0")]
    images = []
    for docs in releases:
        # When the operator of that release builds the default pool's Deployment
        pool = _as_stored(only(docs, "WorkerPool", "default"))
        settings = config.OperatorSettings(worker_image=_worker_image_of(docs))
        [container] = deployments.deployment_for(pool, settings)["spec"]["template"]["spec"]["containers"]
        images.append(container["image"])
        # Then the pool itself pins nothing (an upgrade never changes the hook's object)
        assert "image" not in pool["spec"] and "imagePullPolicy" not in pool["spec"], pool["spec"]
    # And its workers run the image of the release installed last
    assert images == ["ghcr.io/agentrun/agentrun-worker:1.0.0", "ghcr.io/agentrun/agentrun-worker:2.0.0"]


def test_a_pool_that_sets_an_image_keeps_it() -> None:
    pool = _as_stored(only(render(), "WorkerPool", "default"))
    pool["spec"]["image"] = "registry.example.com/my-worker:7"
    settings = config.OperatorSettings(worker_image="ghcr.io/agentrun/agentrun-worker:2.0.0")
    [container] = deployments.deployment_for(pool, settings)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/my-worker:7"


def test_the_crds_are_templates_so_an_upgrade_updates_them() -> None:
    # Helm installs a chart's crds/ folder once and never upgrades it; templates are upgraded
    from tests.chart.rendering import CHART

    assert not (CHART / "crds").exists()
    crds = of_kind(render(), "CustomResourceDefinition")
    assert {c["spec"]["names"]["kind"] for c in crds} == {"AgentRun", "AgentWorkflow", "WorkerPool"}
    for crd in crds:
        annotations = crd["metadata"].get("annotations") or {}
        assert "helm.sh/hook" not in annotations  # hooks are not upgraded with the release
        assert annotations.get("helm.sh/resource-policy") == "keep"
