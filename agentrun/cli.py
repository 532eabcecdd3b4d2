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
        elif kind == streams.STEP:
            detail = " ".join(f"{k}={event[k]}" for k in ("reason", "message") if event.get(k) not in (None, ""))
            self.console.print(f"[bold]▸ step {event.get('step')}[/bold] {event.get('status')} {detail}".rstrip())
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


# -- cluster access --------------------------------------------------------------------------------

KubeconfigOpt = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG", help="Path to a kubeconfig.")
ContextOpt = typer.Option(None, "--context", help="The kubeconfig context to use.")
NamespaceOpt = typer.Option("default", "--namespace", "-n", help="Namespace of the AgentRun.")
OutputOpt = typer.Option("table", "--output", "-o", help="table, json or yaml.")


def _cluster(coro_fn: Any, kubeconfig: str | None, context: str | None) -> Any:
    """Run ``coro_fn(api)`` with a client; turn unreachable clusters into a message, not a trace."""

    async def run() -> Any:
        api = kube.client(kubeconfig, context=context, user_agent="agentrun-cli")
        try:
            return await coro_fn(api)
        finally:
            await api.close()

    try:
        return asyncio.run(run())
    except kube.ApiError as exc:
        err.print(f"[red]{exc.status.message or exc}[/red]")
        raise typer.Exit(1) from exc
    except (OSError, ConnectionError) as exc:
        err.print(f"[red]cannot reach the Kubernetes API:[/red] {exc}\n"
                  "Is KUBECONFIG right? Locally, start `agentrun dev` and export what it prints.")
        raise typer.Exit(2) from exc
    except Exception as exc:  # httpx2 wraps connection failures in its own types
        if type(exc).__name__ in {"ConnectError", "ConnectTimeout", "ReadTimeout"}:
            err.print(f"[red]cannot reach the Kubernetes API:[/red] {exc}\n"
                      "Is KUBECONFIG right? Locally, start `agentrun dev` and export what it prints.")
            raise typer.Exit(2) from exc
        raise


def _age(created: str | None) -> str:
    if not created:
        return "-"
    import datetime

    then = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


COLUMNS = ("NAME", "PHASE", "MODEL", "POOL", "ITERATIONS", "AGE", "REASON")


def _row(obj: dict[str, Any]) -> tuple[str, ...]:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
    return (
        meta.get("name", ""),
        status.get("phase", "Pending"),
        (spec.get("agent") or {}).get("model")
        or (spec.get("agentRef") or spec.get("workflowRef") or {}).get("name", ""),
        spec.get("workerPool", "default"),
        str(status.get("iterations", 0)),
        _age(meta.get("creationTimestamp")),
        status.get("reason") or "",
    )


def _print_objects(objs: list[dict[str, Any]], output: str) -> None:
    import json

    # Machine-readable output bypasses rich: it must never be wrapped or styled.
    if output == "json":
        typer.echo(json.dumps(objs[0] if len(objs) == 1 else {"items": objs}, indent=2))
    elif output == "yaml":
        typer.echo(yaml.safe_dump(objs[0] if len(objs) == 1 else {"items": objs}, sort_keys=False), nl=False)
    elif output == "table":
        import rich.table

        table = rich.table.Table(box=None, pad_edge=False, header_style="bold")
        for column in COLUMNS:
            table.add_column(column)
        for obj in objs:
            table.add_row(*_row(obj))
        out.print(table)
    else:
        raise typer.BadParameter(f"unknown output {output!r}: use table, json or yaml", param_hint="-o")


# -- commands ------------------------------------------------------------------------------------


@app.command()
def logs(
    name: str = typer.Argument(..., help="The AgentRun's name."),
    namespace: str = NamespaceOpt,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the run ends."),
    since_id: str = typer.Option(streams.START, "--since-id", help="Resume after this stream entry id."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Print a run's stream; with -f follow it live until the run ends."""
    config = settings.load()
    redis_url = _redis_url_or_exit(config)

    async def run(api: Any) -> None:
        await _follow_run(api, redis_url, namespace, name, follow=follow, last_id=since_id, console=out)

    _cluster(run, kubeconfig, context)


@app.command()
def migrate(
    database_url: str | None = typer.Option(None, "--database-url", envvar="AGENTRUN_DATABASE_URL",
                                            help="postgresql://… or sqlite:///path (default: local SQLite; "
                                                 "with SUPABASE_URL set, check that project's schema)."),
) -> None:
    """Apply the database migrations (idempotent; safe to run concurrently)."""
    from agentrun import store

    config = settings.load()
    if not database_url and config.supabase_url:
        # Supabase's REST API runs no DDL: check the schema over REST and say what to run if it
        # is missing, instead of migrating a local SQLite file nobody asked for.
        async def check() -> list[str]:
            async with store.from_settings(config) as configured:
                return await configured.migrate()

        try:
            asyncio.run(check())
        except (store.StoreError, ValueError) as exc:
            out.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        out.print("the Supabase project's schema is up to date: applied 0 migration(s)")
        return
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
def gateway(
    host: str | None = typer.Option(None, help="Address to listen on (default AGENTRUN_GATEWAY_HOST)."),
    port: int | None = typer.Option(None, help="Port to listen on (default AGENTRUN_GATEWAY_PORT)."),
) -> None:
    """Serve the HTTP gateway: runs, SSE streams of their events, stop; JWT-authenticated."""
    from agentrun.gateway import app as gateway_app

    gateway_app.serve(host=host, port=port)


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
            api = kube.client(str(stack.endpoints.kubeconfig), user_agent="agentrun-cli")  # type: ignore[union-attr]
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


@app.command()
def submit(
    file: pathlib.Path = typer.Option(..., "--file", "-f", help="AgentRun manifest (YAML; several documents allowed)."),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="Namespace (default: the manifest's, else default)."
    ),
    follow: bool = typer.Option(False, "--follow", help="Stream the run until it ends (one AgentRun only)."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Create AgentRuns from a file; refuses a bad manifest before sending it, naming the field."""
    from agentrun import schema

    docs = [d for d in yaml.safe_load_all(file.read_text()) if d]
    crd = schema.crd_for("AgentRun")
    for doc in docs:
        if doc.get("kind") != "AgentRun":
            raise typer.BadParameter(f"{file}: only AgentRun documents can be submitted, not {doc.get('kind')!r}")
        doc.setdefault("metadata", {})
        doc["metadata"]["namespace"] = namespace or doc["metadata"].get("namespace") or "default"
        errors = schema.validate(crd, schema.apply_defaults(crd, doc))
        if errors:
            err.print(f"[red]{schema.format_errors('AgentRun', doc['metadata'].get('name', ''), errors)}[/red]")
            raise typer.Exit(1)
    if follow and len(docs) != 1:
        raise typer.BadParameter("--follow needs exactly one AgentRun in the file")

    async def create(api: Any) -> list[dict[str, Any]]:
        import lightkube.codecs

        created = []
        for doc in docs:
            obj = kube.to_dict(await api.create(lightkube.codecs.from_dict(doc)))
            out.print(f"agentrun.agentrun.io/{obj['metadata']['name']} created")
            created.append(obj)
        return created

    created = _cluster(create, kubeconfig, context)
    if follow:
        meta = created[0]["metadata"]
        logs(meta["name"], namespace=meta["namespace"], follow=True, since_id=streams.START,
             kubeconfig=kubeconfig, context=context)


@app.command("get")
def get_run(
    name: str = typer.Argument(..., help="The AgentRun's name."),
    namespace: str = NamespaceOpt,
    output: str = OutputOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Show one AgentRun."""

    async def get(api: Any) -> dict[str, Any]:
        try:
            return kube.to_dict(await api.get(kube.AgentRun, name, namespace=namespace))
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                err.print(f'[red]AgentRun "{name}" not found in namespace "{namespace}"[/red]')
                raise typer.Exit(1) from exc
            raise

    _print_objects([_cluster(get, kubeconfig, context)], output)


@app.command("list")
def list_runs(
    namespace: str = NamespaceOpt,
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Runs of every namespace."),
    phase: str | None = typer.Option(None, "--phase", help="Only runs in this phase."),
    output: str = OutputOpt,
    watch: bool = typer.Option(False, "--watch", "-w", help="Keep printing changes (one line each)."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """List AgentRuns (like kubectl get ar)."""
    ns = None if all_namespaces else namespace

    def wanted(obj: dict[str, Any]) -> bool:
        return phase is None or (obj.get("status") or {}).get("phase", "Pending") == phase

    async def fetch(api: Any) -> list[dict[str, Any]]:
        return [kube.to_dict(o) async for o in api.list(kube.AgentRun, namespace=ns or "*")]

    objs = [o for o in _cluster(fetch, kubeconfig, context) if wanted(o)]
    _print_objects(objs, output) if objs or output != "table" else out.print("No AgentRuns found.")
    if not watch:
        return

    async def follow_changes(api: Any) -> None:
        async for _kind, obj in api.watch(kube.AgentRun, namespace=ns or "*"):
            data = kube.to_dict(obj)
            if wanted(data):
                if output == "table":
                    out.print("   ".join(_row(data)), soft_wrap=True)
                else:
                    _print_objects([data], output)

    try:
        _cluster(follow_changes, kubeconfig, context)
    except KeyboardInterrupt:
        pass


@app.command()
def stop(
    name: str = typer.Argument(..., help="The AgentRun's name."),
    namespace: str = NamespaceOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Stop a run gracefully (sets spec.stop; a run that has not started yet never will)."""
    import lightkube.types

    async def request(api: Any) -> dict[str, Any]:
        try:
            obj = kube.to_dict(await api.patch(kube.AgentRun, name, {"spec": {"stop": True}}, namespace=namespace,
                                               patch_type=lightkube.types.PatchType.MERGE))
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                err.print(f'[red]AgentRun "{name}" not found in namespace "{namespace}"[/red]')
                raise typer.Exit(1) from exc
            raise
        return obj

    obj = _cluster(request, kubeconfig, context)
    phase = (obj.get("status") or {}).get("phase", "Pending")
    if phases.is_terminal(phase):
        out.print(f"agentrun.agentrun.io/{name} already ended: {phase}")
    else:
        out.print(f"agentrun.agentrun.io/{name} stop requested (phase {phase})")


if __name__ == "__main__":  # pragma: no cover
    main()
