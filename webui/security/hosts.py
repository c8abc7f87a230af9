"""The Host header check (against DNS rebinding) and the same-origin check for requests that change things.

DNS rebinding: a web page on evil.example makes its own name resolve to 127.0.0.1 (or to this machine's LAN
address), then talks to this server as "same origin". The one thing it cannot fake is the Host header, which
still says evil.example. So requests are answered only when Host names this server: a loopback name, the bound
address, this machine's own names, or a name given with --allowed-hosts. When the server binds every interface,
any IP literal is accepted too: a rebinding attack needs a domain name, and a page whose origin is the bare IP
is this server's own.

Cross-site writes: a page on another origin can still send a "simple" POST (a form, or fetch with no-cors) to
http://127.0.0.1:7860/… from the user's browser. CORS does not stop the request, only the reading of the answer.
So a POST/PUT/PATCH/DELETE carrying an Origin that is neither this server's nor one allowed by
--cors-allow-origins(-regex) is refused with 403.
"""
from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from .exposure import LOOPBACK_NAMES, bind_address

ALL_INTERFACES = frozenset({"0.0.0.0", "::", ""})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def split_host(value: str) -> str:
    """The host part of a Host header or URL authority, lower-case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def machine_names() -> set[str]:
    """This machine's own names (as LAN users may type them)."""
    names = set()
    for name in (socket.gethostname(), socket.getfqdn()):
        name = (name or "").lower().rstrip(".")
        if name:
            names |= {name, f"{name.split('.')[0]}.local"}
    return names


@dataclass(frozen=True)
class HostPolicy:
    names: frozenset[str]                 # exact host names / addresses
    suffixes: tuple[str, ...] = ()        # ".example.lan" allows every name under it
    any_ip: bool = False                  # bound to all interfaces: any IP literal is this server
    allow_all: bool = False               # --allowed-hosts '*'

    @classmethod
    def from_args(cls, args: Any) -> "HostPolicy":
        bind = bind_address(args).lower()
        extra = [h.strip().lower() for h in (getattr(args, "allowed_hosts", None) or "").split(",") if h.strip()]
        names = set(LOOPBACK_NAMES) | {split_host(h) for h in extra if not h.startswith(".") and h != "*"}
        everywhere = bind in ALL_INTERFACES
        if everywhere:
            names |= machine_names()
        else:
            names.add(split_host(bind))
        suffixes = tuple(h for h in extra if h.startswith(".")) + (".localhost",)
        return cls(frozenset(names), suffixes, any_ip=everywhere, allow_all="*" in extra)

    def allows(self, host_header: str | None) -> bool:
        if host_header is None or self.allow_all:
            return True   # HTTP/1.0 without Host cannot be a browser rebinding attack
        host = split_host(host_header)
        if host in self.names or host.endswith(self.suffixes):
            return True
        return self.any_ip and _is_ip(host)


@dataclass(frozen=True)
class OriginPolicy:
    """Origins allowed besides this server's own (the CORS flags)."""
    origins: frozenset[str] = frozenset()
    regex: str | None = None

    def allows(self, origin: str, host_header: str | None) -> bool:
        if origin in self.origins or "*" in self.origins:
            return True
        if self.regex and re.fullmatch(self.regex, origin):
            return True
        if origin == "null" or not host_header:
            return False
        authority = urlsplit(origin).netloc.lower()
        return bool(authority) and authority == host_header.strip().lower()


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _reject(scope: dict, send: Callable, status: int, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": "Forbidden" if status == 403 else "BadRequest", "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class HostCheckMiddleware:
    def __init__(self, app: Callable, policy: HostPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            host = _header(scope, b"host")
            if not self.policy.allows(host):
                name = split_host(host or "")
                await _reject(scope, send, 400,
                              f"Host {name!r} is not a name of this server, so the request was refused (this "
                              f"stops DNS-rebinding attacks). If you reach the server by that name, start it "
                              f"with --allowed-hosts {name}")
                return
        await self.app(scope, receive, send)


class SameOriginMiddleware:
    """Refuses state-changing requests (and websockets) sent by pages of other origins."""

    def __init__(self, app: Callable, policy: OriginPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        unsafe = scope["type"] == "websocket" or (scope["type"] == "http" and scope["method"] in UNSAFE_METHODS)
        origin = _header(scope, b"origin") if unsafe else None
        if origin is not None and not self.policy.allows(origin, _header(scope, b"host")):
            await _reject(scope, send, 403,
                          f"cross-origin request from {origin} refused; allow that origin with "
                          "--cors-allow-origins if it is yours")
            return
        await self.app(scope, receive, send)
