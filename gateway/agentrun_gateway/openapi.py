"""The gateway's OpenAPI 3.0 document, served at ``/openapi.json``.

Written by hand next to the handlers of :mod:`agentrun_gateway.app` (keep them in step);
the tests fuzz the gateway from it with schemathesis. An AgentRun body is described loosely
here (an object with ``metadata`` and ``spec``): the CRD in ``crds/`` is its real schema and
the gateway checks bodies against it.
"""

from __future__ import annotations

import copy
from typing import Any

_NAMESPACE = {"name": "namespace", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"}}
_NAME = {"name": "name", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253}}
_THREAD = {"name": "thread_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,256}$"}}


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request", 401: "No valid bearer token", 403: "The token may not use this namespace",
            404: "Not found", 409: "Conflict", 413: "Body too large", 422: "Invalid",
            429: "Over the token's rate limit: retry after Retry-After seconds", 502: "The Kubernetes API failed",
            503: "A backing service is unreachable, or too many bodies wait for their check"}
    return {str(c): {"description": text[c], **_json("Error")} for c in codes}


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "agentrun gateway", "version": "v1",
             "description": "Watch and steer AgentRuns over HTTP. Every /v1 request needs "
                            "`Authorization: Bearer <JWT>`; tokens in URLs are refused."},
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": {"operationId": "healthz", "security": [], "summary": "Liveness",
                             "responses": {"200": {"description": "Alive", **_json("Health")}}}},
        "/metrics": {"get": {"operationId": "metrics", "security": [], "summary": "Prometheus metrics",
                             "responses": {"200": {"description": "Metrics in text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/v1/namespaces/{namespace}/runs": {
            "parameters": [_NAMESPACE],
            "get": {
                "operationId": "listRuns", "summary": "AgentRuns of a namespace",
                "parameters": [
                    {"name": "phase", "in": "query", "schema": {"type": "string", "enum": [
                        "Pending", "Queued", "Running", "Stopping", "Succeeded", "Failed", "Stopped"]}},
                    {"name": "thread", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "The runs", **_json("RunList")},
                              **_errors(401, 403, 404, 422, 429, 502, 503)},
            },
            "post": {
                "operationId": "createRun", "summary": "Create an AgentRun (checked against the CRD schema)",
                "requestBody": {"required": True, **_json("AgentRunInput")},
                "responses": {"201": {"description": "Created", **_json("AgentRun")},
                              **_errors(400, 401, 403, 404, 409, 413, 422, 429, 502, 503)},
            },
        },
        "/v1/namespaces/{namespace}/runs/{name}": {
            "parameters": [_NAMESPACE, _NAME],
            "get": {"operationId": "getRun", "summary": "One AgentRun",
                    "responses": {"200": {"description": "The run", **_json("AgentRun")},
                                  **_errors(401, 403, 404, 429, 502, 503)}},
        },
        "/v1/namespaces/{namespace}/runs/{name}/stop": {
            "parameters": [_NAMESPACE, _NAME],
            "post": {"operationId": "stopRun", "summary": "Request a graceful stop (spec.stop and the stop flag)",
                     "responses": {"202": {"description": "Stop requested", **_json("AgentRun")},
                                   **_errors(401, 403, 404, 409, 429, 502, 503)}},
        },
        "/v1/namespaces/{namespace}/runs/{name}/stream": {
            "parameters": [_NAMESPACE, _NAME],
            "get": {
                "operationId": "streamRun",
                "summary": "Server-Sent Events of the run, from Last-Event-ID to its terminal status",
                "parameters": [{"name": "Last-Event-ID", "in": "header", "required": False,
                                "schema": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"}}],
                "responses": {"200": {"description": "An event stream: `id:` is the stream entry id, `event:` "
                                                     "the event type, `data:` JSON; `: ping` when idle; "
                                                     "`event: expired` then the database record when the "
                                                     "stream has expired",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **_errors(400, 401, 403, 404, 429, 502, 503)},
            },
        },
        "/v1/namespaces/{namespace}/threads/{thread_id}/messages": {
            "parameters": [_NAMESPACE, _THREAD],
            "get": {
                "operationId": "threadMessages", "summary": "Messages of a conversation thread, in order",
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {"200": {"description": "The messages", **_json("MessageList")},
                              **_errors(401, 403, 404, 422, 429, 503)},
            },
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Health": {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]},
            "Error": {"type": "object", "required": ["error", "message"], "properties": {
                "error": {"type": "string"}, "message": {"type": "string"},
                "field": {"type": "string", "description": "The field at fault (400 for bad input)"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "message": {"type": "string"}, "reason": {"type": "string"}}}},
            }},
            "AgentRun": {"type": "object", "required": ["metadata"], "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"type": "object"}, "spec": {"type": "object"}, "status": {"type": "object"}}},
            "AgentRunInput": {"type": "object", "required": ["metadata", "spec"], "properties": {
                "apiVersion": {"type": "string", "enum": ["agentrun.io/v1alpha1"]},
                "kind": {"type": "string", "enum": ["AgentRun"]},
                "metadata": {"type": "object", "properties": {"name": {"type": "string"},
                                                              "generateName": {"type": "string"}}},
                "spec": {"type": "object", "description": "The AgentRun spec; see crds/agentrun.yaml"}}},
            "RunList": {"type": "object", "required": ["items"],
                        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/AgentRun"}}}},
            "Message": {"type": "object", "properties": {
                "id": {"type": "string"}, "threadId": {"type": "string"}, "runId": {"type": "string", "nullable": True},
                "role": {"type": "string"}, "content": {}, "seq": {"type": "integer"},
                "createdAt": {"type": "string", "nullable": True}}},
            "MessageList": {"type": "object", "required": ["items"], "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}}}},
        },
    },
}


def document() -> dict[str, Any]:
    """A copy of the OpenAPI document."""
    return copy.deepcopy(_DOCUMENT)
