"""The web view in headless Chromium, against a real gateway, operator and worker.

Debian's Chromium (``/usr/bin/chromium``) is driven by Playwright; Playwright's own browser
download is never used. The gateway runs on uvicorn in this process against the bed's API
emulator, Redis and PostgreSQL and checks HS256 tokens signed here; runs are executed by real
kopf and Dramatiq processes. ``AGENTRUN_WEBVIEW_SCREENSHOT=docs/webview.png`` makes the
tool-call test save its screenshot there (``scripts/screenshot-webview`` does that).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import redis
import uvicorn
from agentrun_gateway import app as gateway_app
from agentrun_gateway import config
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from agentrun import keys, streams
from tests.e2e import harness
from tests.worker import openai_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = pathlib.Path(os.environ.get("AGENTRUN_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECRET = "webview-test-secret-long-enough-for-hs256-0000"
WAIT_MS = 60_000
"""How long the page may take to show something: generous, the machine is shared and slow."""
expect.set_options(timeout=WAIT_MS)
# 30 turns of 8 words, 60 ms a word: about 15 s of streaming, far longer than the test needs.
SLOW: list[dict[str, Any]] = [{"text": " ".join(f"w{turn}-{i}" for i in range(8)) + " ", "chunkDelayMs": 60}
                              for turn in range(30)]


def stream_events(redis_url: str, uid: str) -> list[dict[str, Any]]:
    """A run's stream, read synchronously: Playwright's sync API holds this thread's event loop."""
    client = redis.Redis.from_url(redis_url)
    try:
        entries: Any = client.xrange(keys.stream(uid))
        return [streams.decode(fields) for _, fields in entries]
    finally:
        client.close()


def token(namespaces: Any = ("*",), *, secret: str = SECRET, sub: str = "web-tester") -> str:
    return jwt.encode({"sub": sub, "aud": "agentrun", "exp": int(time.time() + 3600), "namespaces": list(namespaces)},
                      secret, algorithm="HS256")


class Gateway:
    """The gateway on uvicorn in a thread of the test process, on a port that survives a restart."""

    def __init__(self, settings: config.GatewaySettings) -> None:
        self.settings = settings
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Gateway:
        # a short graceful shutdown: open streams are cut, as when a gateway pod goes away
        server = uvicorn.Server(uvicorn.Config(gateway_app.create_app(self.settings), host="127.0.0.1",
                                               port=self.port, log_level="warning", lifespan="on",
                                               timeout_graceful_shutdown=1))
        thread = threading.Thread(target=server.run, name="webview-gateway", daemon=True)
        thread.start()
        harness.wait_until(lambda: server.started or not thread.is_alive(), 30, "the gateway to listen")
        assert server.started, "the gateway did not start"
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(30)
            assert not self._thread.is_alive(), "the gateway did not stop"


def settings(bed: harness.Bed, **overrides: Any) -> config.GatewaySettings:
    return config.GatewaySettings(redis_url=bed.redis_url, database_url=bed.database_url,
                                  kubeconfig=str(bed.kubeconfig), heartbeat_seconds=1, redis_block_ms=200,
                                  **overrides)


@pytest.fixture(scope="module")
def gateway(bed: harness.Bed) -> Iterator[Gateway]:
    served = Gateway(settings(bed, jwt_secret=SECRET)).start()
    yield served
    served.stop()


@pytest.fixture(scope="session")
def chromium() -> pathlib.Path:
    """Debian's Chromium, installed by scripts/ensure-browser when missing; never skipped."""
    if not os.access(CHROMIUM, os.X_OK):
        subprocess.run([str(ROOT / "scripts" / "ensure-browser")], check=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the web view tests need Debian's Chromium at {CHROMIUM}: run scripts/ensure-browser "
                    "(apt-get install chromium) as root, or point AGENTRUN_TEST_CHROMIUM at a Chromium binary. "
                    "Playwright's own browser download is not used.")
    return CHROMIUM


@pytest.fixture
def browser(chromium: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[BrowserContext]:
    """A Chromium with a fresh profile of this test's own."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 820}, color_scheme="light", locale="en-US", timezone_id="UTC",
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


class Recorder:
    """Every URL the page requested and every error its scripts raised or logged."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # Chromium logs every answer >= 400 ("Failed to load resource"): the 401s, 403s and
        # 422s the tests provoke are expected; anything else logged as an error is not.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    opened = browser.new_page()
    opened.recorder = Recorder(opened)  # type: ignore[attr-defined]
    yield opened
    errors = opened.recorder.errors  # type: ignore[attr-defined]
    assert not errors, f"the page's scripts failed: {errors}"


def sign_in(page: Page, value: str, *, reason: str | None = None) -> None:
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    if reason is not None:
        expect(page.locator("#token-reason")).to_contain_text(reason)
    page.fill("#token-input", value)
    page.click("#token-form button[type=submit]")


def assert_no_token_in_urls(page: Page, *tokens: str) -> None:
    urls: list[str] = page.recorder.urls  # type: ignore[attr-defined]
    assert urls
    for url in urls:
        assert not any(t in url for t in tokens), url


def start_from_form(page: Page, *, name: str = "", model: str = "", text: str = "", spec: Any = None) -> None:
    form = page.locator("#create-form")
    if not form.is_visible():
        page.click("#new-run > summary")
    form.locator("[name=name]").fill(name)
    form.locator("[name=model]").fill(model)
    form.locator("[name=input]").fill(text)
    if spec is not None:
        if not form.locator("[name=spec]").is_visible():
            form.locator(".advanced > summary").click()
        form.locator("[name=spec]").fill(spec if isinstance(spec, str) else json.dumps(spec))
    form.locator("button[type=submit]").click()


def shown_words(page: Page) -> list[str]:
    return " ".join(page.locator("#transcript .msg.assistant .body").all_inner_texts()).split()


def test_a_run_started_from_the_page_streams_its_tokens_and_stops(
    bed: harness.Bed, operator: Any, namespace: str, gateway: Gateway, page: Page
) -> None:
    # Given a worker for the namespace, and the page opened with a token for that namespace
    bed.start_worker(f"agentrun.{namespace}.default")
    good = token([namespace])
    page.goto(f"{gateway.url}/#/{namespace}")
    sign_in(page, good)
    expect(page.locator("#runs-note")).to_contain_text(f"No runs in namespace {namespace}")
    expect(page.locator("#who")).to_have_text("token of web-tester")
    # When a slow scripted run is started from the form
    start_from_form(page, name="slow", spec={"input": "Count *slowly*", "agent": {"model": "scripted",
                                                                                   "script": SLOW}})
    # Then the page opens it, shows its input, and its tokens appear as they stream
    expect(page.locator("#run-name")).to_have_text("slow")
    expect(page.locator("#transcript .msg.user em")).to_have_text("slowly")
    expect(page.locator("#transcript .msg.assistant").first).to_contain_text("w0-3")
    expect(page.locator("#run-connection")).to_have_text("live")
    expect(page.locator("#runs tr[data-name=slow] td.phase")).to_have_text("Running")
    expect(page.locator("#runs tr[data-name=slow] td.model")).to_have_text("scripted")
    expect(page.locator("#transcript .event.status").first).to_have_text("Running (attempt 1)")
    before = len(shown_words(page))
    harness.wait_until(lambda: len(shown_words(page)) > before, 30, "more tokens to appear", interval=0.1)
    # When Stop is pressed
    page.click("#stop")
    # Then the run ends Stopped: on the page, in its table, and on the resource
    expect(page.locator("#run-phase")).to_have_text("Stopped")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#runs tr[data-name=slow] td.phase")).to_have_text("Stopped")
    run = bed.get_run(namespace, "slow")
    assert (run["spec"]["stop"], run["status"]["phase"]) == (True, "Stopped")
    # And the page showed exactly what was streamed, cut short before the script's end
    events = stream_events(bed.redis_url, run["metadata"]["uid"])
    streamed = "".join(e["delta"] for e in events if e["type"] == "assistant").split()
    final = events[-1]
    assert final["status"] == "stopped"
    expect(page.locator("#transcript .event.final")).to_contain_text(f"{final['reason']}: {final['message']}")
    assert shown_words(page) == streamed
    assert 0 < len(streamed) < sum(len(t["text"].split()) for t in SLOW)
    # And the token never travelled in a URL, and is kept for this tab only
    assert_no_token_in_urls(page, good)
    assert page.evaluate("sessionStorage.getItem('agentrun.token')") == good
    assert page.evaluate("Object.values(localStorage).join(' ')").find(good) == -1


def test_a_wrong_token_makes_the_page_ask_again(gateway: Gateway, namespace: str, page: Page) -> None:
    # Given the page of a gateway that needs a token
    page.goto(f"{gateway.url}/#/{namespace}")
    # When the token is not a JWT, then when it is signed with another secret
    sign_in(page, "not-a-jwt")
    forged = token([namespace], secret="another-secret-that-is-long-enough-for-hs256")
    sign_in(page, forged, reason="the token is not a JWT")
    # Then the page asks again each time, with the gateway's reason
    good = token([namespace])
    sign_in(page, good, reason="the token's signature does not verify")
    # And with a good token the namespace shows
    expect(page.locator("#token-dialog")).to_be_hidden()
    expect(page.locator("#runs-note")).to_contain_text(f"No runs in namespace {namespace}")
    # When the token may not use the namespace shown, the page says so instead of asking
    page.click("#forget")
    sign_in(page, token(["elsewhere"]))
    expect(page.locator("#runs-note")).to_contain_text(f'this token may not use namespace "{namespace}"')
    expect(page.locator("#token-dialog")).to_be_hidden()
    assert_no_token_in_urls(page, "not-a-jwt", forged, good)


def test_the_form_shows_the_gateways_field_errors(gateway: Gateway, namespace: str, page: Page) -> None:
    page.goto(f"{gateway.url}/#/{namespace}")
    sign_in(page, token([namespace]))
    expect(page.locator("#runs-note")).to_contain_text("No runs")
    # When the name is not a DNS name, the gateway's 422 names the field
    start_from_form(page, name="Not_A_Name", model="scripted", text="hi")
    errors = page.locator("#create-errors")
    expect(errors).to_be_visible()
    expect(errors.locator("li code")).to_have_text("metadata.name")
    expect(errors).to_contain_text("RFC 1123")
    # When the spec is not JSON, the page says so before sending anything
    start_from_form(page, spec="{input: hi")
    expect(errors.locator("li code")).to_have_text("spec")
    expect(errors).to_contain_text("not valid JSON")
    # When the spec breaks the CRD schema, the gateway's error names the field
    start_from_form(page, spec={"input": "hi", "agent": {"model": "scripted", "maxIterations": "many"}})
    expect(errors.locator("li code").first).to_have_text("spec.agent.maxIterations")


def test_the_page_works_without_a_token_on_a_gateway_in_dev_mode_and_after_a_stream_expired(
    bed: harness.Bed, operator: Any, namespace: str, page: Page
) -> None:
    # Given a gateway that accepts requests without a token (agentrun dev)
    dev = Gateway(settings(bed, insecure_no_auth=True, host="127.0.0.1")).start()
    try:
        bed.start_worker(f"agentrun.{namespace}.default")
        page.goto(f"{dev.url}/#/{namespace}")
        expect(page.locator("#who")).to_have_text("no token needed (dev mode)")
        # When a run is started with the simple fields
        start_from_form(page, model="scripted", text="hello from the page")
        # Then it runs to the end without any sign-in
        expect(page.locator("#run-phase")).to_have_text("Succeeded")
        expect(page.locator("#transcript .msg.assistant .body")).to_have_text("You said: hello from the page")
        expect(page.locator("#token-dialog")).to_be_hidden()
        expect(page.locator("#runs tbody tr")).to_have_count(1)
        name = page.locator("#run-name").inner_text()
        assert name.startswith("run-")
        # When the run's stream has expired, the page shows the run from the database
        client = redis.Redis.from_url(bed.redis_url)
        try:
            client.delete(keys.stream(bed.get_run(namespace, name)["metadata"]["uid"]))
        finally:
            client.close()
        page.reload()
        expect(page.locator("#transcript .event.note")).to_contain_text("expired")
        expect(page.locator("#transcript .msg.assistant .body")).to_have_text("You said: hello from the page")
        expect(page.locator("#transcript .msg.user")).to_have_count(1)
        expect(page.locator("#run-phase")).to_have_text("Succeeded")
    finally:
        dev.stop()


def test_the_stream_resumes_with_last_event_id_after_the_gateway_restarts(
    bed: harness.Bed, operator: Any, namespace: str, gateway: Gateway, page: Page
) -> None:
    # Given a run streaming slowly into the page
    bed.start_worker(f"agentrun.{namespace}.default")
    # 20 turns of 6 words, 60 ms a word: about 7 s, so the restart happens mid-stream
    script: list[dict[str, Any]] = [{"text": " ".join(f"r{turn}-{i}" for i in range(6)) + " ", "chunkDelayMs": 60}
                                    for turn in range(20)]
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "resumed", "namespace": namespace},
                "spec": {"input": "go", "agent": {"model": "scripted", "script": script}}})
    page.goto(f"{gateway.url}/#/{namespace}/resumed")
    sign_in(page, token([namespace]))
    expect(page.locator("#transcript .msg.assistant").first).to_contain_text("r0-2")
    # When the gateway goes away mid-stream and comes back
    gateway.stop()
    expect(page.locator("#run-connection")).to_have_text("reconnecting…")
    gateway.start()
    # Then the page reconnects and the run's text arrives whole: nothing lost, nothing twice
    expect(page.locator("#run-phase")).to_have_text("Succeeded")
    expected = " ".join(t["text"] for t in script).split()
    assert shown_words(page) == expected


def test_tool_calls_are_folded_and_markdown_is_rendered(
    bed: harness.Bed, operator: Any, namespace: str, gateway: Gateway, page: Page, tmp_path: pathlib.Path
) -> None:
    # Given a worker whose model is the local OpenAI-compatible server, and two other runs
    server = openai_server.OpenAIServer().start()
    try:
        bed.start_worker(f"agentrun.{namespace}.default", OPENAI_API_KEY="sk-webview", OPENAI_BASE_URL=server.base_url)
        answer = ("The gateway serves the web view at `/`. **What it shows:**\n\n"
                  "- the runs of a namespace, with *phase*, model and age\n"
                  "- a run's stream as it arrives, tool calls folded\n"
                  "- a **Stop** button\n\n"
                  "```sh\nagentrun gateway --port 8080\n```\n")
        summary = json.dumps({"text": "Explained the web view: runs, live stream, stop."})
        server.reply(openai_server.Stream(openai_server.tool_reply(("call_1", "complete", summary), text=answer),
                                          delay=0.05))
        for name, spec in (("summarize-logs", {"input": "Summarize the logs", "agent": {"model": "scripted"}}),
                           ("nightly-report", {"input": "Write the nightly report", "agent": {
                               "model": "scripted",
                               "script": [{"text": "Collecting " * 400, "chunkDelayMs": 150}]}})):
            bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                        "metadata": {"name": name, "namespace": namespace}, "spec": spec})
        bed.wait_phase(namespace, "summarize-logs", "Succeeded")
        page.goto(f"{gateway.url}/#/{namespace}")
        sign_in(page, token([namespace]))
        # When a run on that model is started from the form
        start_from_form(page, name="explain-web-view", model="openai/test-model",
                        text="How does the **web view** work?")
        # Then its Markdown is rendered, and the tool call is folded with its result inside
        expect(page.locator("#run-phase")).to_have_text("Succeeded")
        message = page.locator("#transcript .msg.assistant")
        expect(message.locator("li")).to_have_count(3)
        expect(message.locator("strong").first).to_have_text("What it shows:")
        expect(message.locator("pre code")).to_have_text("agentrun gateway --port 8080")
        expect(message.locator("p code")).to_have_text("/")
        tool = page.locator("#transcript details.tool")
        expect(tool).to_have_count(1)
        expect(tool).not_to_have_attribute("open", "")
        expect(tool.locator("summary .tool-name")).to_have_text("complete")
        expect(tool.locator("summary .tool-state")).to_have_text("done")
        expect(tool.locator(".tool-section pre").last).not_to_be_visible()
        assert "Explained the web view" in (tool.locator(".tool-section pre").last.text_content() or "")
        expect(page.locator("#transcript .event.final")).to_contain_text("Completed")
        expect(page.locator("#runs tr[data-name=explain-web-view] td.phase")).to_have_text("Succeeded")
        expect(page.locator("#runs tr[data-name=explain-web-view] td.num")).to_have_text("1")
        expect(page.locator("#runs tr[data-name=nightly-report] td.phase")).to_have_text("Running")
        expect(page.locator("#runs tr[data-name=summarize-logs] td.phase")).to_have_text("Succeeded")
        # When the tool call is opened, its arguments show pretty-printed
        tool.locator("summary").click()
        expect(tool.locator(".tool-section pre").first).to_contain_text('"text": "Explained the web view')
        tool.locator("summary").click()
        shot = tmp_path / "webview.png"
        page.set_viewport_size({"width": 1280, "height": 560})
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        target = os.environ.get("AGENTRUN_WEBVIEW_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
        bed.patch_spec(namespace, "nightly-report", {"stop": True})
    finally:
        server.stop()


def test_model_text_cannot_inject_markup(gateway: Gateway, page: Page) -> None:
    # Given the page's Markdown renderer, as served by the gateway
    page.goto(f"{gateway.url}/healthz")
    render = ("async (text) => { const md = await import(new URL('/ui/markdown.js', location.href)); "
              "const box = document.createElement('div'); box.innerHTML = md.render(text); "
              "return {html: box.innerHTML, tags: [...box.querySelectorAll('*')].map(e => e.tagName.toLowerCase()), "
              "hrefs: [...box.querySelectorAll('a')].map(a => a.getAttribute('href')), "
              "handlers: [...box.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
              ".filter(n => n.startsWith('on'))}; }")
    # When model text carries HTML, script URLs and attribute breakouts
    hostile = ('<img src=x onerror="alert(1)"> <script>alert(2)</script>\n\n'
               '[click](javascript:alert(3)) [data](data:text/html,<b>x</b>) [rel](/v1/namespaces)\n\n'
               '[ok](https://example.com/?a=1&b="2") `<b>code</b>` **<i>bold</i>**\n\n'
               '```html\n<iframe src="https://example.com"></iframe>\n```')
    result = page.evaluate(render, hostile)
    # Then no element but the renderer's own exists, and only the safe link keeps an href
    assert set(result["tags"]) <= {"p", "a", "code", "strong", "pre", "br", "em"}, result
    assert result["hrefs"] == ['https://example.com/?a=1&b="2"'], result
    assert result["handlers"] == [], result
    assert "&lt;script&gt;" in result["html"] and "&lt;iframe" in result["html"]
    # And ordinary Markdown renders
    plain = page.evaluate(render, "# Title\n\n1. one\n2. *two*\n\n> quoted `x`\n\n~~gone~~ __strong__ snake_case_name")
    assert plain["tags"] == ["h3", "ol", "li", "li", "em", "blockquote", "p", "code", "p", "del", "strong"], plain


def test_the_page_is_served_with_a_strict_content_security_policy(gateway: Gateway, page: Page) -> None:
    response = page.goto(f"{gateway.url}/")
    assert response is not None and response.status == 200
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "connect-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    missing = page.request.get(f"{gateway.url}/ui/../app.py")
    assert missing.status == 404
    assert page.request.get(f"{gateway.url}/ui/nope.js").status == 404
    etag = page.request.get(f"{gateway.url}/ui/app.js").headers["etag"]
    assert page.request.get(f"{gateway.url}/ui/app.js", headers={"If-None-Match": etag}).status == 304
