"""The tracing facade with some of its packages missing, in fresh interpreters.

Each case runs ``agentrun_worker.tracing`` in a subprocess whose import system refuses the
named packages (as if they were not installed), with the backends configured, and runs the
three hooks around a failing tool call, as the agent loop does.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = '''
import json, sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

BLOCKED = json.loads(sys.argv[1])
sys.meta_path.insert(0, _Blocked())

import structlog
from agentrun import log
from agentrun_worker import tools, tracing
from agentrun_worker.providers import base

log.configure("INFO", "json")
backends = tracing.configure(json.loads(sys.argv[2]))
structlog.contextvars.bind_contextvars(run_id="r1", thread_id="t1", namespace="ns", name="n")
with tracing.invoke_agent({"model": "openai/m"}, run_id="0" * 32, thread_id="t1", user_input="hi") as run:
    with tracing.chat([{"role": "user", "content": "hi"}], iteration=1) as chat:
        chat.finished(base.Turn(text="ok", finish="continue", input_tokens=1, output_tokens=1))
    with tracing.execute_tool("lookup", call_id="c1", arguments="{}") as tool:
        tool.finished(tools.Result("error: down", error=True))
print(json.dumps({"backends": backends.names, "otel": backends.otel is not None}))
'''


def run_blocked(blocked: list[str], env: dict[str, str]) -> tuple[dict[str, object], str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(blocked), json.dumps(env)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize(("blocked", "env", "backends", "warning"), [
    # Nothing installed, everything configured: the hooks run, each missing backend is named once
    (["opentelemetry", "langfuse", "sentry_sdk"],
     {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk",
      "AGENTRUN_SENTRY_DSN": "http://k@127.0.0.1:9/1"},
     [], ["tracing.otel_unavailable", "tracing.langfuse_unavailable", "tracing.sentry_unavailable"]),
    # The API and SDK without an OTLP exporter: no exporter, so no spans to make
    (["opentelemetry.exporter"], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, [],
     ["tracing.otlp_unavailable"]),
    # Nothing configured: nothing on, nothing said
    ([], {}, [], []),
])
def test_the_hooks_run_with_whatever_is_installed(
    blocked: list[str], env: dict[str, str], backends: list[str], warning: list[str]
) -> None:
    result, stderr = run_blocked(blocked, env)
    assert result["backends"] == backends
    said = sorted({json.loads(line)["event"] for line in stderr.splitlines()
                   if line.startswith("{") and '"tracing.' in line})
    assert said == sorted(warning), stderr
