"""CORS (closed unless the --cors-allow-origins flags name origins) and the security headers on every response."""
from __future__ import annotations

from typing import Any, Callable

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from .hosts import OriginPolicy

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"referrer-policy", b"same-origin"),
)
FRAME_ANCESTORS = b"frame-ancestors 'self'"


def origin_policy(args: Any) -> OriginPolicy:
    origins = [o.strip().rstrip("/") for o in (getattr(args, "cors_allow_origins", None) or "").split(",")]
    return OriginPolicy(frozenset(o for o in origins if o), getattr(args, "cors_allow_origins_regex", None) or None)


def add_cors(server: FastAPI, policy: OriginPolicy) -> None:
    """Always installed, even with no origins: Gradio adds its own permissive CORS handling to the app it mounts
    (any origin, with credentials, once the Host is not localhost) unless the parent app configures CORS."""
    server.add_middleware(CORSMiddleware, allow_origins=sorted(policy.origins),
                          allow_origin_regex=policy.regex, allow_credentials=True,
                          allow_methods=["*"], allow_headers=["*"])


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The response's headers plus ours; an existing CSP keeps its rules and gains frame-ancestors."""
    present = {key.lower() for key, _ in headers}
    out = list(headers)
    out += [(key, value) for key, value in SECURITY_HEADERS if key not in present]
    for i, (key, value) in enumerate(out):
        if key.lower() == b"content-security-policy":
            if b"frame-ancestors" not in value:
                out[i] = (key, value.rstrip(b"; ") + b"; " + FRAME_ANCESTORS)
            break
    else:
        out.append((b"content-security-policy", FRAME_ANCESTORS))
    return out


class SecurityHeadersMiddleware:
    def __init__(self, app: Callable):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": with_security_headers(list(message.get("headers") or []))}
            await send(message)

        await self.app(scope, receive, send_with_headers)
