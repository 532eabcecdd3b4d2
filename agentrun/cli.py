"""The ``agentrun`` command line.

``dev`` runs the whole system on this machine, ``demo`` runs ``examples/hello.yaml`` on it
and streams the answer, ``submit``/``get``/``list``/``stop``/``logs`` work with runs,
``migrate`` applies the database migrations. Kubernetes access follows kubectl's
conventions (``KUBECONFIG``, ``--namespace/-n``, ``--context``). With ``--gateway URL``
(``AGENTRUN_GATEWAY_URL``) the run commands go through the gateway instead of the cluster
and Redis. Which one is :mod:`agentrun.clients`' business; how a stream looks is
:mod:`agentrun.rendering`'s; this module only parses options and prints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import re
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import rich.console
import rich.markup
import typer
import yaml

from agentrun import binaries, clients, components, phases, rendering, settings, streams

app = typer.Typer(help="Run AI agents in the background on Kubernetes.", no_args_is_help=True, add_completion=False)
out = rich.console.Console(highlight=False)
err = rich.console.Console(stderr=True, highlight=False)

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "hello.yaml"


def main() -> None:
    app()


# -- clients and errors ---------------------------------------------------------------------------

KubeconfigOpt = typer.Option(None, "--kubeconfig", envvar="KUBECONFIG", help="Path to a kubeconfig.")
ContextOpt = typer.Option(None, "--context", help="The kubeconfig context to use.")
NamespaceOpt = typer.Option("default", "--namespace", "-n", help="Namespace of the AgentRun.")
OutputOpt = typer.Option("table", "--output", "-o", help="table, json or yaml.")
GatewayOpt = typer.Option(None, "--gateway", envvar="AGENTRUN_GATEWAY_URL",
                          help="Go through the gateway at this URL instead of the cluster and Redis.")
TokenFileOpt = typer.Option(None, "--token-file",
                            help="File holding the gateway's bearer token (default: $AGENTRUN_TOKEN).")
OUTPUTS = ("table", "json", "yaml")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a command's requests go: the options every run command shares."""

    kubeconfig: str | None
    context: str | None
    gateway: str | None
    token_file: str | None

    def open(self) -> clients.Client:
        return clients.open_client(kubeconfig=self.kubeconfig, context=self.context,
                                   redis_url=settings.load().redis_url, gateway_url=self.gateway,
                                   token_file=self.token_file)


def _fail(exc: clients.ClientError) -> NoReturn:
    err.print(f"[red]error:[/red] {rich.markup.escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(rich.markup.escape(exc.hint), soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _with_client(target: Target, work: Callable[[clients.Client], Awaitable[T]]) -> T:
    """Run ``work`` with a client of ``target``; errors become a message and an exit code."""

    async def run() -> T:
        async with target.open() as client:
            return await work(client)

    try:
        return asyncio.run(run())
    except clients.ClientError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise typer.BadParameter(f"unknown output {output!r}: use table, json or yaml", param_hint="-o")


async def _show_stream(client: clients.Client, run: dict[str, Any], *, follow: bool, last_id: str,
                       console: rich.console.Console) -> rendering.Renderer:
    """Render a run's stream; say so (and what to do) when it has not started yet."""
    from agentrun.clients import base

    meta = run["metadata"]
    namespace, name, phase, pool = meta["namespace"], meta["name"], base.phase_of(run), base.pool_of(run)
    render = rendering.Renderer(console)
    if base.not_started(run):
        missing = await client.pool_missing(namespace, pool)
        pool_note = ""
        if missing is not None:
            pool_note = (f'; its WorkerPool "{pool}" does not exist in namespace "{namespace}" '
                         f"(pools there: {', '.join(missing) or 'none'}), so the operator will fail it")
        if not follow:
            events = [e async for e in client.events(run, last_id=last_id, follow=False)]
            if not events:
                raise clients.ClientError(
                    f'AgentRun "{name}" is still {phase} on pool "{pool}"{pool_note}: it has not started, '
                    "so there is no output yet.",
                    f"`agentrun logs {name} -n {namespace} -f` waits for it to start and follows it.")
            for entry_id, event in events:
                render(entry_id, event)
            return render
        err.print(f'AgentRun "{name}" is {phase} on pool "{pool}"{pool_note}; waiting for it to start '
                  "(Ctrl-C stops waiting, the run stays queued).", soft_wrap=True, markup=False)
    try:
        async for entry_id, event in client.events(run, last_id=last_id, follow=follow):
            if event.get("type") == base.CONNECTION:  # the client's own news: stderr, on a line of its own
                render.end_line()
                err.print(f"agentrun: {event['message']}", soft_wrap=True, markup=False, highlight=False)
                continue
            render(entry_id, event)
    except clients.ClientError:
        render.end_line()  # the error goes on a line of its own
        raise
    if render.final is None and (follow or phases.is_terminal(phase)):
        current = await client.get(namespace, name) if follow else run
        if phases.is_terminal(base.phase_of(current)):
            render(None, base.final_status(current))
    if render.final is not None and render.final.get("reason") == "WorkerPoolNotFound":
        err.print(f"Create the WorkerPool, or set spec.workerPool to an existing one "
                  f"(`kubectl get wp -n {namespace}` lists them), then submit again.", markup=False)
    return render


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
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the run ends (waits for a "
                                                              "queued run to start)."),
    since_id: str = typer.Option(streams.START, "--since-id", help="Resume after this stream entry id."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    gateway: str | None = GatewayOpt,
    token_file: str | None = TokenFileOpt,
) -> None:
    """Print a run's stream: assistant text, tool calls and results, the final status; -f follows it live."""
    if since_id != streams.START and not re.fullmatch(r"\d{1,20}-\d{1,20}", since_id):
        raise typer.BadParameter(f"{since_id!r} is not a stream entry id such as 1700000000000-0",
                                 param_hint="--since-id")
    target = Target(kubeconfig, context, gateway, token_file)
    if not gateway and not settings.load().redis_url:
        err.print("[red]AGENTRUN_REDIS_URL is not set.[/red] `agentrun dev` prints the line to export; "
                  "or go through the gateway with --gateway URL.", soft_wrap=True)
        raise typer.Exit(2)

    async def show(client: clients.Client) -> None:
        run = await client.get(namespace, name)
        await _show_stream(client, run, follow=follow, last_id=since_id, console=out)

    _with_client(target, show)


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
    try:
        components.entry("gateway")(host=host, port=port)
    except ValueError as exc:  # a setting the gateway refuses to serve with (auth, loopback, Redis)
        err.print(f"[red]error:[/red] {rich.markup.escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def dev(
    api_port: int = typer.Option(8001, help="Port of the Kubernetes API emulator."),
    redis_port: int = typer.Option(6390, help="Port of the embedded Redis (when AGENTRUN_REDIS_URL is unset)."),
    gateway_port: int = typer.Option(8002, help="Port of the gateway (on 127.0.0.1, without authentication)."),
) -> None:
    """Run the whole system here: API emulator, operator, worker, gateway, embedded Redis and SQLite."""
    from agentrun import log

    devstack = components.entry("local")
    config = settings.load()
    log.configure(config.log_level, config.log_format)
    stack = devstack.DevStack(config, api_port=api_port, redis_port=redis_port)
    endpoints = stack.start()
    stop_gateway: Callable[[], None] = lambda: None  # noqa: E731
    try:
        gateway_url, stop_gateway = _start_dev_gateway(endpoints, gateway_port)
        kubectl, note = binaries.kubectl_hint()
        me = _this_command()
        for text in (
            f"[bold]agentrun dev[/bold] is up: API {endpoints.api_url}, Redis {endpoints.redis_url}, "
            f"database {endpoints.database_url}, broker: {endpoints.broker}, gateway {gateway_url} (no auth)",
            "In another terminal:",
            f"  {endpoints.exports()}",
            f"  {kubectl} apply -f {EXAMPLE}" + (f"   # {note}" if note else ""),
            f"  {kubectl} get ar -w",
            f"  {me} logs hello -f",
            f"  {me} list --gateway {gateway_url}   # any run command works through the gateway too "
            f"(or export AGENTRUN_GATEWAY_URL={gateway_url})",
            f"The web view: {gateway_url}/ (runs, live streams, stop)",
            *([f"Worker metrics: {endpoints.worker_metrics_url}"] if endpoints.worker_metrics_url else []),
            "Ctrl-C stops everything.",
        ):
            out.print(text, soft_wrap=True, markup=text.startswith("[bold]"), highlight=False)
        _wait_forever()
    finally:
        stop_gateway()
        stack.stop()


def _this_command() -> str:
    """How to run this CLI again from another terminal: ``agentrun`` when PATH finds this one,
    else its full path (a virtualenv that is not activated)."""
    import shutil
    import sys

    mine = pathlib.Path(sys.argv[0]).resolve()
    found = shutil.which("agentrun")
    if mine.name == "agentrun" and (found is None or pathlib.Path(found).resolve() != mine):
        return str(mine)
    return "agentrun"


def _start_dev_gateway(endpoints: Any, port: int) -> tuple[str, Callable[[], None]]:
    """The gateway for ``agentrun dev``, in a thread (``agentrun_gateway.dev``)."""
    try:
        started: tuple[str, Callable[[], None]] = components.entry("gateway-dev")(
            port=port, redis_url=endpoints.redis_url, database_url=endpoints.database_url,
            kubeconfig=str(endpoints.kubeconfig))
    except OSError as exc:
        _fail(clients.Unreachable(str(exc), "Pick another port with --gateway-port."))
    return started


@app.command()
def demo(
    file: pathlib.Path = typer.Option(EXAMPLE, "--file", "-f", help="AgentRun manifest to run."),
    timeout: float = typer.Option(120.0, help="Give up after this many seconds."),
) -> None:
    """Start the local system, run an AgentRun, stream it live and print its final phase."""
    from agentrun import log

    devstack = components.entry("local")
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
            from agentrun.clients import base, cluster

            async with cluster.ClusterClient(str(stack.endpoints.kubeconfig), None, redis_url) as client:
                obj = await client.get(namespace, name)
                await _show_stream(client, obj, follow=True, last_id=streams.START, console=out)
                for _ in range(100):  # the terminal event follows the resource's final phase
                    obj = await client.get(namespace, name)
                    if phases.is_terminal(base.phase_of(obj)):
                        return base.phase_of(obj)
                    await asyncio.sleep(0.05)
                return "Unknown"

        phase = asyncio.run(asyncio.wait_for(run(), timeout))
    raise typer.Exit(0 if phase == phases.Phase.SUCCEEDED else 1)


SUBMIT_ORDER = {"WorkerPool": 0, "AgentWorkflow": 1, "AgentRun": 2}
"""The agentrun kinds ``submit`` takes, in the order it creates them: what runs refer to first."""


@app.command()
def submit(
    file: pathlib.Path = typer.Option(..., "--file", "-f", help="Manifests (YAML, several documents): AgentRuns, "
                                                               "WorkerPools and AgentWorkflows, as for kubectl apply."),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="Namespace (default: the manifest's, else default)."
    ),
    follow: bool = typer.Option(False, "--follow", help="Stream the run until it ends (one AgentRun only); the "
                                                        "exit code is 1 unless it Succeeded."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    gateway: str | None = GatewayOpt,
    token_file: str | None = TokenFileOpt,
) -> None:
    """Create what a file holds (AgentRuns, WorkerPools, AgentWorkflows), as kubectl apply -f does;
    every document is validated locally first, and a bad one is refused naming the field."""
    from agentrun import schema

    try:
        docs = [d for d in yaml.safe_load_all(file.read_text()) if d]
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc.strerror or exc}", param_hint="-f") from exc
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{file} is not valid YAML: {exc}", param_hint="-f") from exc
    for index, doc in enumerate(docs, 1):
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        api_version = str(doc.get("apiVersion", "")) if isinstance(doc, dict) else ""
        if kind not in SUBMIT_ORDER or not api_version.startswith(f"{schema.GROUP}/"):
            raise typer.BadParameter(
                f"{file}: document {index} is a {kind} ({api_version or 'no apiVersion'}): agentrun submit "
                f"creates the agentrun.io kinds only ({', '.join(SUBMIT_ORDER)}); create it with "
                f"`kubectl apply -f`, then submit the rest. Nothing was created.", param_hint="-f")
        assert isinstance(doc, dict)
        doc.setdefault("metadata", {})
        doc["metadata"]["namespace"] = namespace or doc["metadata"].get("namespace") or "default"
        crd = schema.crd_for(str(kind))
        errors = schema.validate(crd, schema.apply_defaults(crd, doc))
        if errors:
            text = schema.format_errors(str(kind), doc["metadata"].get("name", ""), errors)
            err.print(f"[red]{rich.markup.escape(text)}[/red]\nNothing was created.")
            raise typer.Exit(1)
    docs.sort(key=lambda d: SUBMIT_ORDER[d["kind"]])  # stable: the file's order within a kind
    runs = [d for d in docs if d["kind"] == "AgentRun"]
    if follow and len(runs) != 1:
        raise typer.BadParameter("--follow needs exactly one AgentRun in the file")
    target = Target(kubeconfig, context, gateway, token_file)

    async def create(client: clients.Client) -> str | None:
        from agentrun.clients import base

        here = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "WorkerPool"}
        for doc in runs:  # every pool is checked before anything is created
            ns, pool = doc["metadata"]["namespace"], base.pool_of(doc)
            missing = None if (ns, pool) in here else await client.pool_missing(ns, pool)
            if missing is not None:
                raise clients.Invalid(
                    f'spec.workerPool: WorkerPool "{pool}" not found in namespace "{ns}" '
                    f"(pools there: {', '.join(missing) or 'none'})",
                    "Create the WorkerPool first (put it in the same file, or kubectl apply -f pool.yaml), "
                    "or set spec.workerPool to one that exists.")
        created = []
        for doc in docs:
            obj, action = await client.apply(doc)
            out.print(f"{doc['kind'].lower()}.agentrun.io/{obj['metadata']['name']} {action}", markup=False)
            if doc["kind"] == "AgentRun":
                created.append(obj)
        if not follow:
            return None
        render = await _show_stream(client, created[0], follow=True, last_id=streams.START, console=out)
        return str((render.final or {}).get("status") or "")

    final = _with_client(target, create)
    if follow and final != "succeeded":
        raise typer.Exit(1)


@app.command("get")
def get_run(
    name: str = typer.Argument(..., help="The AgentRun's name."),
    namespace: str = NamespaceOpt,
    output: str = OutputOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    gateway: str | None = GatewayOpt,
    token_file: str | None = TokenFileOpt,
) -> None:
    """Show one AgentRun."""
    _check_output(output)
    run = _with_client(Target(kubeconfig, context, gateway, token_file), lambda c: c.get(namespace, name))
    _print_objects([run], output)


@app.command("list")
def list_runs(
    namespace: str = NamespaceOpt,
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Runs of every namespace."),
    phase: str | None = typer.Option(None, "--phase", help="Only runs in this phase."),
    output: str = OutputOpt,
    watch: bool = typer.Option(False, "--watch", "-w", help="Keep printing changes (one line each)."),
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    gateway: str | None = GatewayOpt,
    token_file: str | None = TokenFileOpt,
) -> None:
    """List AgentRuns (like kubectl get ar); through the gateway, -w polls every 2 s."""
    _check_output(output)
    if phase is not None and phase not in {p.value for p in phases.Phase}:
        raise typer.BadParameter(f"unknown phase {phase!r}; one of {', '.join(p.value for p in phases.Phase)}",
                                 param_hint="--phase")
    ns = None if all_namespaces else namespace

    async def run(client: clients.Client) -> None:
        from agentrun.clients import base

        objs = await client.list_runs(ns, phase)
        if objs or output != "table":
            _print_objects(objs, output)
        else:
            out.print("No AgentRuns found." if ns is None else f"No AgentRuns found in namespace {ns}.")
        if not watch:
            return
        # Only changes after the listing: a watch starts by replaying every object.
        seen = {o["metadata"].get("uid"): o["metadata"].get("resourceVersion") for o in objs}
        async for obj in client.watch(ns):
            meta = obj["metadata"]
            if seen.get(meta.get("uid")) == meta.get("resourceVersion"):
                continue
            seen[meta.get("uid")] = meta.get("resourceVersion")
            if phase is not None and base.phase_of(obj) != phase:
                continue
            if output == "table":
                out.print("   ".join(_row(obj)), soft_wrap=True, markup=False)
            else:
                _print_objects([obj], output)

    _with_client(Target(kubeconfig, context, gateway, token_file), run)


@app.command()
def stop(
    name: str = typer.Argument(..., help="The AgentRun's name."),
    namespace: str = NamespaceOpt,
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    gateway: str | None = GatewayOpt,
    token_file: str | None = TokenFileOpt,
) -> None:
    """Stop a run gracefully (sets spec.stop; a run that has not started yet never will)."""
    from agentrun.clients import base

    run, requested = _with_client(Target(kubeconfig, context, gateway, token_file), lambda c: c.stop(namespace, name))
    if requested:
        out.print(f"agentrun.agentrun.io/{name} stop requested (phase {base.phase_of(run)})", markup=False)
    else:
        out.print(f"agentrun.agentrun.io/{name} already ended: {base.phase_of(run)}", markup=False)


if __name__ == "__main__":  # pragma: no cover
    main()
