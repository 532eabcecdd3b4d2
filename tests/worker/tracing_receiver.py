"""A local HTTP server that receives what the tracing backends send, for the tests to read.

It accepts OTLP/HTTP traces (``/v1/traces``, and Langfuse's ``/api/public/otel/v1/traces``,
protobuf, maybe gzipped) and Sentry envelopes (``/api/<project>/envelope/``), answers 200 to
everything, and decodes what it got: spans as plain dicts, envelopes as their items.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.server
import json
import threading
import zlib
from typing import Any

from tests.e2e import harness


@dataclasses.dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    def __init__(self) -> None:
        self.port = harness.free_port()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli

                    body = brotli.decompress(body)
                with receiver._lock:
                    receiver.requests.append(Request(self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sentry_dsn(self, key: str = "publickey") -> str:
        return f"http://{key}@127.0.0.1:{self.port}/42"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _matching(self, suffix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?")[0].endswith(suffix)]

    def spans(self, path: str = "/v1/traces") -> list[dict[str, Any]]:
        """Every span received on ``path`` (OTLP protobuf), as a dict."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans = []
        for request in self._matching(path):
            export = ExportTraceServiceRequest()
            export.ParseFromString(request.body)
            for resource_spans in export.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans.append({
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "status": span.status.code,
                            "status_message": span.status.message,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "events": [e.name for e in span.events],
                            "scope": scope_spans.scope.name,
                            "resource": resource,
                            "headers": request.headers,
                        })
        return spans

    def envelopes(self) -> list[dict[str, Any]]:
        """Every Sentry envelope received: ``{"header": …, "items": [(item header, payload)]}``."""
        envelopes = []
        for request in self._matching("/envelope/"):
            # Header line, then item header / payload line pairs (JSON items hold no newline).
            lines = [line for line in request.body.split(b"\n") if line.strip()]
            items = []
            for head, payload in zip(lines[1::2], lines[2::2], strict=False):
                try:
                    items.append((json.loads(head), json.loads(payload)))
                except ValueError:
                    items.append((json.loads(head), payload))
            envelopes.append({"header": json.loads(lines[0]), "items": items, "raw": request.body,
                              "headers": request.headers})
        return envelopes

    def events(self) -> list[dict[str, Any]]:
        """The error events of every envelope."""
        return [payload for env in self.envelopes() for head, payload in env["items"] if head.get("type") == "event"]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None
