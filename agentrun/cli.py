"""The ``agentrun`` command line.

``dev`` runs the whole system on this machine, ``demo`` runs ``examples/hello.yaml`` on it
and streams the answer, ``logs`` follows a run's stream, ``migrate`` applies the database
migrations. Kubernetes access follows kubectl's conventions (``KUBECONFIG``,
``--namespace/-n``, ``--context``).
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import threading
from typing import Any

import rich.console
import typer
import yaml

from agentrun import binaries, kube, phases, settings, streams

app = typer.Typer(help="Run AI agents in the background on Kubernetes.", no_args_is_help=True, add_completion=False)
out = rich.console.Console(highlight=False)
err = rich.console.Console(stderr=True, highlight=False)

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "hello.yaml"


def main() -> None:
    app()


# -- rendering ---------------------------------------------------------------------------------


class Renderer:
    """Prints stream events for people: assistant text as it arrives, status as lines."""

    def __init__(self, console: rich.console.Console) -> None:
        self.console = console
        self.in_text = False

    def __call__(self, entry_id: str, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == streams.ASSISTANT:
            self.console.print(event.get("delta", ""), end="", soft_wrap=True)
            self.in_text = True
            return
        if kind == streams.MESSAGE:
            if self.in_text:
                self.console.print()
                self.in_text = False
            return
        if self.in_text:
            self.console.print()
            self.in_text = False
        if kind == streams.STATUS:
            status = event.get("status")
            style = {"succeeded": "green", "failed": "red", "stopped": "yellow"}.get(str(status), "cyan")
            detail = " ".join(
                f"{k}={event[k]}" for k in ("reason", "message", "iterations") if event.get(k) not in (None, "")
            )
            self.console.print(f"[{style}]● {status}[/{style}] {detail}".rstrip())
        else:
            self.console.print(f"[dim]{kind}: {event}[/dim]")


async def _follow_run(
    api: Any, redis_url: str, namespace: str, name: str, *, follow: bool, last_id: str, console: rich.console.Console
) -> dict[str, Any]:
    import redis.asyncio as aioredis

    try:
        obj = kube.to_dict(await api.get(kube.AgentRun, name, namespace=namespace))
    except kube.ApiError as exc:
        if kube.is_not_found(exc):
            raise typer.BadParameter(f'AgentRun "{name}" not found in namespace "{namespace}"') from exc
        raise
    uid = obj["metadata"]["uid"]
    render = Renderer(console)
    client = aioredis.Redis.from_url(redis_url)
    try:
        if not follow:
            for entry_id, event in await streams.read_all(client, uid):
                if entry_id > last_id or last_id == streams.START:
                    render(entry_id, event)
            return obj

        async def still_going() -> bool:
            current = kube.to_dict(await api.get(kube.AgentRun, name, namespace=namespace))
            return not phases.is_terminal((current.get("status") or {}).get("phase"))

        async for entry_id, event in streams.follow(client, uid, last_id=last_id, block_ms=2_000, on_idle=still_going):
            render(entry_id, event)
    finally:
        await client.aclose()
    return obj


def _redis_url_or_exit(config: settings.Settings) -> str:
    if not config.redis_url:
        err.print("[red]AGENTRUN_REDIS_URL is not set.[/red] `agentrun dev` prints the line to export.")
        raise typer.Exit(2)
    return config.redis_url


# -- commands ------------------------------------------------------------------------------------


@app.command()
def logs(
    name: str = typer.Argument(..., help="The AgentRun's name."),
    namespace: str = typer.Option("default", "--namespace", "-n", help="Namespace of the AgentRun."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the run ends."),
    since_id: str = typer.Option(streams.START, "--since-id", help="Resume after this stream entry id."),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG", help="Path to a kubeconfig."),
) -> None:
    """Print a run's stream; with -f follow it live until the run ends."""
    config = settings.load()
    redis_url = _redis_url_or_exit(config)

    async def run() -> None:
        api = kube.client(kubeconfig)
        try:
            await _follow_run(api, redis_url, namespace, name, follow=follow, last_id=since_id, console=out)
        finally:
            await api.close()

    try:
        asyncio.run(run())
    except OSError as exc:
        err.print(f"[red]cannot reach the cluster or Redis:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def migrate(
    database_url: str | None = typer.Option(None, "--database-url", envvar="AGENTRUN_DATABASE_URL",
                                            help="postgresql://… or sqlite:///path (default: local SQLite)."),
) -> None:
    """Apply the database migrations (idempotent; safe to run concurrently)."""
    from agentrun import store

    config = settings.load()
    url = database_url or f"sqlite:///{pathlib.Path(config.state_dir) / 'agentrun.db'}"
    pathlib.Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    applied = asyncio.run(store.migrate_url(url))
    out.print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


def _wait_forever() -> None:
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()


@app.command()
def dev(
    api_port: int = typer.Option(8001, help="Port of the Kubernetes API emulator."),
    redis_port: int = typer.Option(6390, help="Port of the embedded Redis (when AGENTRUN_REDIS_URL is unset)."),
) -> None:
    """Run the whole system here: API emulator, operator, worker, embedded Redis and SQLite."""
    from agentrun import devstack, log

    config = settings.load()
    log.configure(config.log_level, config.log_format)
    stack = devstack.DevStack(config, api_port=api_port, redis_port=redis_port)
    endpoints = stack.start()
    try:
        kubectl = binaries.which_kubectl() or "kubectl"
        for text in (
            f"[bold]agentrun dev[/bold] is up: API {endpoints.api_url}, Redis {endpoints.redis_url}, "
            f"database {endpoints.database_url}, broker: {endpoints.broker}",
            "In another terminal:",
            f"  {endpoints.exports()}",
            f"  {kubectl} apply -f {EXAMPLE}",
            f"  {kubectl} get ar -w",
            "  agentrun logs hello -f",
            "Ctrl-C stops everything.",
        ):
            out.print(text, soft_wrap=True)
        _wait_forever()
    finally:
        stack.stop()


@app.command()
def demo(
    file: pathlib.Path = typer.Option(EXAMPLE, "--file", "-f", help="AgentRun manifest to run."),
    timeout: float = typer.Option(120.0, help="Give up after this many seconds."),
) -> None:
    """Start the local system, run an AgentRun, stream it live and print its final phase."""
    from agentrun import devstack, log

    config = settings.load()
    log.configure("WARNING", config.log_format)
    manifest = yaml.safe_load(file.read_text())
    namespace = manifest.get("metadata", {}).get("namespace", "default")
    name = manifest["metadata"]["name"]
    out.print("[dim]starting the API emulator, operator, worker, Redis and database…[/dim]")
    with devstack.DevStack(config) as stack:
        assert stack.endpoints is not None
        devstack.apply(stack.endpoints.kubeconfig, manifest)
        out.print(f"[bold]AgentRun {namespace}/{name}[/bold] applied; streaming:\n")
        redis_url = stack.endpoints.redis_url

        async def run() -> str:
            api = kube.client(str(stack.endpoints.kubeconfig))  # type: ignore[union-attr]
            try:
                await _follow_run(api, redis_url, namespace, name, follow=True, last_id=streams.START, console=out)
                for _ in range(100):  # the terminal event follows the resource's final phase
                    obj = kube.to_dict(await api.get(kube.AgentRun, name, namespace=namespace))
                    status = obj.get("status") or {}
                    if phases.is_terminal(status.get("phase")):
                        usage = status.get("usage") or {}
                        out.print(f"\nAgentRun {name}: [bold]{status['phase']}[/bold] "
                                  f"(reason {status.get('reason')}, {status.get('iterations', 0)} iterations, "
                                  f"{usage.get('totalTokens', 0)} tokens)")
                        return str(status["phase"])
                    await asyncio.sleep(0.05)
                return "Unknown"
            finally:
                await api.close()

        phase = asyncio.run(asyncio.wait_for(run(), timeout))
    raise typer.Exit(0 if phase == phases.Phase.SUCCEEDED else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
