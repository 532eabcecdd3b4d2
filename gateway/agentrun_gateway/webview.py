"""The web view: a small page at ``/`` that lists, follows, starts and stops runs.

:func:`routes` is added to the gateway's routes by :func:`agentrun_gateway.app.create_app`.
The page is static (``static/``: HTML, vanilla JavaScript modules and CSS, no build step and
nothing fetched from elsewhere, so it works air-gapped) and talks to the same ``/v1`` API as
any client, with the token it asks for in the ``Authorization`` header. Serving it needs no
token: it holds no data. The files are read once, when the app is built, and answered with
a strict Content-Security-Policy, so that even a mistake in the page's rendering of model
output cannot run a script or send anything to another origin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

from starlette import requests, responses, routing

STATIC = pathlib.Path(__file__).with_name("static")
INDEX = "index.html"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""Scripts and styles from the gateway only (no inline code), requests to the gateway only."""


@dataclasses.dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load(directory: pathlib.Path = STATIC) -> dict[str, Asset]:
    """The page's files by name; only these are ever served (no path from a URL reaches the disk)."""
    assets = {}
    for path in sorted(directory.iterdir()):
        media_type = MEDIA_TYPES.get(path.suffix)
        if path.is_file() and media_type is not None:
            body = path.read_bytes()
            assets[path.name] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    if INDEX not in assets:
        raise RuntimeError(f"the web view's {INDEX} is missing from {directory}: the package is incomplete")
    return assets


def routes() -> list[routing.BaseRoute]:
    """``GET /`` (the page) and ``GET /ui/{file}`` (its scripts and styles)."""
    assets = load()

    async def index(request: requests.Request) -> responses.Response:
        return _answer(request, assets[INDEX])

    async def asset(request: requests.Request) -> responses.Response:
        found = assets.get(request.path_params["file"])
        if found is None:
            return responses.JSONResponse({"error": "not_found", "message": "no such file"}, status_code=404)
        return _answer(request, found)

    return [
        routing.Route("/", index, methods=["GET", "HEAD"]),
        routing.Route("/ui/{file}", asset, methods=["GET", "HEAD"]),
    ]


def _answer(request: requests.Request, found: Asset) -> responses.Response:
    headers = {
        # revalidated every time (an ETag answer is a few bytes), so an upgraded gateway's page is used at once
        "Cache-Control": "no-cache",
        "ETag": found.etag,
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }
    if request.headers.get("if-none-match") == found.etag:
        return responses.Response(status_code=304, headers=headers)
    return responses.Response(found.body, media_type=found.media_type, headers=headers)
