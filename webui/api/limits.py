"""Limits on what a client may send: the size of a request body, and the pixels of an uploaded image.

`BodySizeLimit` is plain ASGI middleware, so it covers every route (the API's base64 images, Gradio's
uploads, anything added later). A declared Content-Length over the limit is answered 413 before any byte
is read; a body without one (chunked) is counted as it arrives and cut off at the limit.

`configure_pil_pixel_limit` sets Pillow's own decompression-bomb limit, which is what guards images
decoded outside our API (Gradio's image components open uploads with Pillow).
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from PIL import Image

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MB = 1024 * 1024


def too_large_body(limit: int) -> bytes:
    message = f"request body is larger than the {limit // MB} MB allowed (setting max_request_mb)"
    return json.dumps({"error": "RequestTooLarge", "detail": message, "body": "", "errors": message}).encode()


async def _send_413(send: Send, limit: int) -> None:
    body = too_large_body(limit)
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodySizeLimit:
    """Answer 413 to any HTTP request whose body exceeds `limit()` bytes (read per request, so a settings
    change applies at once)."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = int(self.limit())
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, limit)
            return
        state = {"seen": 0, "exceeded": False, "started": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    state["exceeded"] = True
                    return {"type": "http.disconnect"}   # the app stops reading as if the client left
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"] and not state["started"]:
                return   # the app's reply to a cut-off body is replaced by our 413 below
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["exceeded"]:
                raise
        if state["exceeded"] and not state["started"]:
            await _send_413(send, limit)


def configure_pil_pixel_limit(max_pixels: int) -> None:
    """Make Pillow refuse to open images with more than `max_pixels` pixels.

    Pillow warns above MAX_IMAGE_PIXELS and raises DecompressionBombError above twice that; halving the
    setting makes the error start exactly at the limit. This is process-wide Pillow state, set by the
    server at start and whenever the setting changes.
    """
    Image.MAX_IMAGE_PIXELS = max(1, int(max_pixels) // 2)


def check_pixels(image: Image.Image, max_pixels: int | None) -> str | None:
    """A message if the image (only its header is read so far) has more pixels than allowed."""
    if max_pixels and image.width * image.height > max_pixels:
        return (f"image is {image.width}x{image.height}, more than the {max_pixels} pixels allowed "
                f"(setting img_max_pixels)")
    return None


def install_limits(server: Any, settings: Any) -> None:
    """Body-size middleware on `server` and Pillow's pixel limit, both following the live settings."""
    server.add_middleware(BodySizeLimit, limit=lambda: int(settings.get("max_request_mb")) * MB)
    configure_pil_pixel_limit(settings.get("img_max_pixels"))

    def on_change(changed: dict[str, Any]) -> None:
        if "img_max_pixels" in changed:
            configure_pil_pixel_limit(changed["img_max_pixels"])

    settings.on_change(on_change)
