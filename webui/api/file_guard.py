"""What the Gradio file route may serve.

Gradio's `/gradio_api/file=<path>` serves a file only if it lies (after resolving symlinks) under its
`allowed_paths`, its static paths, its upload folder or its cache; we allow exactly the outputs folder.
Given an http(s) URL instead of a path, the same route fetches that URL server-side and streams it back:
on a LAN instance that makes the server an open web proxy, so this middleware refuses URLs there, and
closes Gradio's `proxy=` route (used only by apps that embed a hosted Space, which this one never does).
A NUL byte in any path is refused outright (Gradio's proxy route answered it with a 500).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .limits import ASGIApp, Receive, Scope, Send

FILE_ROUTE = re.compile(r"^/(?:gradio_api/)?file=(.*)$", re.DOTALL)
PROXY_ROUTE = re.compile(r"^/(?:gradio_api/)?proxy=")
URL_LIKE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def gradio_file_options(outputs_dir: Path) -> dict[str, Any]:
    """Keyword arguments for `gr.mount_gradio_app` that limit file serving to the outputs folder."""
    return {"allowed_paths": [str(Path(outputs_dir).resolve())]}


class FileRouteGuard:
    """403 for `file=` URLs and for `proxy=`; 400 for a NUL byte in the path."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            match = FILE_ROUTE.match(path)
            if "\x00" in path:
                await _refuse(send, 400, "NUL byte in the path.")
                return
            if match and URL_LIKE.match(match.group(1)) or PROXY_ROUTE.match(path):
                await _refuse(send, 403, "File not allowed: this server does not fetch URLs.")
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
