"""Logins for the whole server: credential lists, constant-time checks, a throttle on failures, browser
sessions, and the ASGI middleware that puts every route except the login page and /healthz behind them.

Why our own middleware rather than Gradio's `auth=`: Gradio guards its own routes one by one (its static
assets, for one, stay open) and knows nothing of the API routes mounted beside it. A middleware in front of the
whole FastAPI app sees every request, so no route can be forgotten. Gradio is then mounted with an
`auth_dependency` that reads the user this middleware established, so `gr.Request.username` is filled in.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import html
import json
import math
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote

from .owners import Requester, anonymous, attach, requester_of

HEALTH_PATH = "/healthz"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
API_PREFIXES = ("/sdapi/", "/internal/")
SESSION_COOKIE = "studio_session"
MAX_LOGIN_BODY = 8192
REALM = "Stable Diffusion studio"


class CredentialError(ValueError):
    """A malformed --gradio-auth / --api-auth value or credentials file."""


# ---- credentials ---------------------------------------------------------------------------------

def parse_credentials(text: str, source: str = "credentials") -> list[tuple[str, str]]:
    """`user:pass[,user2:pass2]`; each entry is split on its first ':' so passwords may contain ':'."""
    pairs = []
    for number, item in enumerate(text.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep:
            raise CredentialError(f"{source}: entry {number} has no ':' (expected user:password)")
        if not user.strip():
            raise CredentialError(f"{source}: entry {number} has an empty user name")
        pairs.append((user.strip(), password))
    return pairs


def read_credentials_file(path: Path) -> list[tuple[str, str]]:
    """The same format, one or more entries per line; blank lines and lines starting with '#' are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialError(f"cannot read credentials file {path}: {exc.strerror or exc}") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            pairs += parse_credentials(line, f"{path} line {number}")
    return pairs


class CredentialStore:
    """Users and passwords; the first user listed is the admin."""

    def __init__(self, pairs: list[tuple[str, str]]):
        if not pairs:
            raise CredentialError("no credentials given")
        self._pairs = [(user.encode(), password.encode()) for user, password in pairs]
        self.admin = pairs[0][0]
        self.users = list(dict.fromkeys(user for user, _ in pairs))

    def verify(self, user: str, password: str) -> bool:
        """Constant time in the contents: every entry is compared, whether or not an earlier one matched."""
        user_b, password_b = user.encode("utf-8", "replace"), password.encode("utf-8", "replace")
        found = False
        for u, p in self._pairs:
            same_user = hmac.compare_digest(user_b, u)
            same_password = hmac.compare_digest(password_b, p)
            found |= same_user & same_password
        return found


# ---- throttle and sessions -----------------------------------------------------------------------

class FailureThrottle:
    """After `limit` failed logins from one client within `window` seconds, refuse its logins until the
    oldest of those failures is `window` seconds old."""

    def __init__(self, limit: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000):
        self.limit, self.window, self.clock, self.max_clients = limit, window, clock, max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.get(client)
        if failures is None:
            return deque()
        cutoff = self.clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def retry_after(self, client: str) -> int | None:
        """Seconds until this client may try again, or None if it may try now."""
        failures = self._recent(client)
        if len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[-self.limit] + self.window - self.clock()))

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self.max_clients:
            self._forget_idle()
        self._failures.setdefault(client, deque(maxlen=self.limit * 2)).append(self.clock())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _forget_idle(self) -> None:
        for client in list(self._failures):
            self._recent(client)
        while len(self._failures) >= self.max_clients:   # still full: drop the oldest entries
            self._failures.pop(next(iter(self._failures)))


class SessionStore:
    """Random session tokens of logged-in browsers, each valid for `max_age` seconds."""

    def __init__(self, max_age: float = 7 * 24 * 3600, clock: Callable[[], float] = time.time, limit: int = 10_000):
        self.max_age, self.clock, self.limit = max_age, clock, limit
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def create(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        self._sessions[token] = (user, self.clock() + self.max_age)
        while len(self._sessions) > self.limit:
            self._sessions.popitem(last=False)
        return token

    def user(self, token: str | None) -> str | None:
        entry = self._sessions.get(token) if token else None
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._sessions[token]
            return None
        return entry[0]

    def drop(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)


# ---- the policy ----------------------------------------------------------------------------------

@dataclass
class AuthPolicy:
    """`ui` guards everything (--gradio-auth); `api`, if set, guards /sdapi/* and /internal/* instead (--api-auth)."""
    ui: CredentialStore | None = None
    api: CredentialStore | None = None
    throttle: FailureThrottle = field(default_factory=FailureThrottle)
    sessions: SessionStore = field(default_factory=SessionStore)

    @classmethod
    def from_args(cls, args: Any) -> "AuthPolicy":
        ui_pairs = parse_credentials(getattr(args, "gradio_auth", None) or "", "--gradio-auth")
        if getattr(args, "gradio_auth_path", None):
            ui_pairs += read_credentials_file(Path(args.gradio_auth_path))
        api_pairs = parse_credentials(getattr(args, "api_auth", None) or "", "--api-auth")
        return cls(ui=CredentialStore(ui_pairs) if ui_pairs else None,
                   api=CredentialStore(api_pairs) if api_pairs else None)

    @property
    def enabled(self) -> bool:
        return self.ui is not None or self.api is not None

    @property
    def admins(self) -> set[str]:
        return {store.admin for store in (self.ui, self.api) if store is not None}

    def store_for(self, path: str) -> CredentialStore | None:
        if path.startswith(API_PREFIXES) and self.api is not None:
            return self.api
        return self.ui

    def requester(self, user: str) -> Requester:
        return Requester(name=user, authenticated=True, admin=user in self.admins)

    def gradio_dependency(self) -> Callable | None:
        """For gr.mount_gradio_app(auth_dependency=…): the user the middleware let in (None without UI auth,
        so Gradio does not ask for a login of its own)."""
        if self.ui is None:
            return None

        def current_user(request: Any) -> str | None:
            who = requester_of(request)
            return who.name if who.authenticated else None
        return current_user


# ---- the middleware ------------------------------------------------------------------------------

def client_of(scope: dict) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def cookie(scope: dict, name: str) -> str | None:
    raw = header(scope, b"cookie") or ""
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def basic_credentials(scope: dict) -> tuple[str, str] | None:
    value = header(scope, b"authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")   # malformed: counts as a failed attempt
    user, _, password = decoded.partition(":")
    return user, password


def safe_next(target: str | None) -> str:
    """Only a path on this server: never another host (`//evil`, `/\\evil`, `https://…`)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


class AuthMiddleware:
    def __init__(self, app: Callable, policy: AuthPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        client = client_of(scope)
        if self.policy.ui is not None and scope["type"] == "http" and path.rstrip("/") in (LOGIN_PATH, LOGOUT_PATH):
            await (self._login if path.rstrip("/") == LOGIN_PATH else self._logout)(scope, receive, send)
            return
        store = None if path == HEALTH_PATH else self.policy.store_for(path)
        if store is None:
            attach(scope, anonymous(client))
            await self.app(scope, receive, send)
            return
        user = self._session_user(scope, store)
        presented = None if user else basic_credentials(scope)
        if presented is not None:
            wait = self.policy.throttle.retry_after(client)
            if wait is not None:
                await _too_many(scope, receive, send, wait)
                return
            if store.verify(*presented):
                user = presented[0]
                self.policy.throttle.succeeded(client)
            else:
                self.policy.throttle.failed(client)
        if user is None:
            await self._refuse(scope, receive, send, path, wrong=presented is not None)
            return
        attach(scope, self.policy.requester(user))
        await self.app(scope, receive, send)

    def _session_user(self, scope: dict, store: CredentialStore) -> str | None:
        if store is not self.policy.ui:
            return None   # API routes under --api-auth take that list's credentials only
        return self.policy.sessions.user(cookie(scope, SESSION_COOKIE))

    async def _refuse(self, scope: dict, receive: Callable, send: Callable, path: str, wrong: bool) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        method = scope.get("method", "GET")
        accept = header(scope, b"accept") or ""
        if not path.startswith(API_PREFIXES) and method in ("GET", "HEAD") and "text/html" in accept \
                and self.policy.ui is not None:
            target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
            root = scope.get("root_path", "")
            await _respond(scope, receive, send, 303, b"", "text/plain",
                           [(b"location", f"{root}{LOGIN_PATH}?next={quote(target, safe='/')}".encode())])
            return
        message = "wrong user name or password" if wrong else "authentication required"
        headers = [(b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode())] \
            if path.startswith(API_PREFIXES) else []
        body = json.dumps({"error": "Unauthorized", "detail": f"{message}: log in at {LOGIN_PATH} "
                           "or send HTTP Basic credentials"}).encode()
        await _respond(scope, receive, send, 401, body, "application/json", headers)

    # ---- the login page ------------------------------------------------------------------------
    async def _login(self, scope: dict, receive: Callable, send: Callable) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        target = safe_next((query.get("next") or ["/"])[0])
        if scope["method"] in ("GET", "HEAD"):
            await _respond(scope, receive, send, 200, login_page(scope, target), "text/html; charset=utf-8")
            return
        if scope["method"] != "POST":
            await _respond(scope, receive, send, 405, b"use GET or POST", "text/plain", [(b"allow", b"GET, POST")])
            return
        body = await _read_body(receive, MAX_LOGIN_BODY)
        if body is None:
            await _respond(scope, receive, send, 413, b"login form too large", "text/plain")
            return
        client = client_of(scope)
        wait = self.policy.throttle.retry_after(client)
        if wait is not None:
            await _too_many(scope, receive, send, wait)
            return
        form = parse_qs(body.decode("utf-8", "replace"))
        user, password = (form.get("username") or [""])[0], (form.get("password") or [""])[0]
        target = safe_next((form.get("next") or [target])[0])
        if not self.policy.ui.verify(user, password):
            self.policy.throttle.failed(client)
            page = login_page(scope, target, "Wrong user name or password.")
            await _respond(scope, receive, send, 401, page, "text/html; charset=utf-8")
            return
        self.policy.throttle.succeeded(client)
        token = self.policy.sessions.create(user)
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        set_cookie = f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax{secure}"
        root = scope.get("root_path", "")
        await _respond(scope, receive, send, 303, b"", "text/plain",
                       [(b"location", f"{root}{target}".encode()), (b"set-cookie", set_cookie.encode())])

    async def _logout(self, scope: dict, receive: Callable, send: Callable) -> None:
        self.policy.sessions.drop(cookie(scope, SESSION_COOKIE))
        expired = f"{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
        root = scope.get("root_path", "")
        await _respond(scope, receive, send, 303, b"", "text/plain",
                       [(b"location", f"{root}{LOGIN_PATH}".encode()), (b"set-cookie", expired.encode())])


def login_page(scope: dict, target: str, error: str = "") -> bytes:
    action = html.escape(scope.get("root_path", "") + LOGIN_PATH)
    problem = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · {REALM}</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #0b0f19; color: #e5e7eb; display: grid;
       place-items: center; min-height: 100vh; margin: 0; }}
form {{ background: #1f2937; padding: 2rem; border-radius: 8px; width: 18rem; }}
label {{ display: block; margin: .8rem 0 .3rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; border-radius: 4px; border: 1px solid #4b5563;
        background: #111827; color: inherit; }}
button {{ margin-top: 1.2rem; width: 100%; padding: .6rem; border: 0; border-radius: 4px; background: #ea580c;
         color: white; font-weight: 600; cursor: pointer; }}
.error {{ color: #fca5a5; }}
</style></head>
<body><form method="post" action="{action}">
<h1 style="font-size:1.2rem;margin:0">{REALM}</h1>{problem}
<input type="hidden" name="next" value="{html.escape(target)}">
<label for="username">User name</label><input id="username" name="username" autocomplete="username" autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password">
<button type="submit">Log in</button>
</form></body></html>""".encode()


async def _read_body(receive: Callable, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _too_many(scope: dict, receive: Callable, send: Callable, wait: int) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": "TooManyRequests",
                       "detail": f"too many failed logins from this address; try again in {wait} s"}).encode()
    await _respond(scope, receive, send, 429, body, "application/json", [(b"retry-after", str(wait).encode())])


async def _respond(scope: dict, receive: Callable, send: Callable, status: int, body: bytes, content_type: str,
                   headers: list[tuple[bytes, bytes]] = ()) -> None:
    head = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})
