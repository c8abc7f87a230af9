"""Who is asking: the authenticated user (or the client address when auth is off), and whether they are an admin.

The auth middleware attaches a `Requester` to every request's ASGI state; routes and Gradio handlers read it back
with `requester_of(request)`, which accepts a Starlette request or a `gr.Request` (whose state is the same dict).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, MutableMapping

STATE_KEY = "studio_requester"


@dataclass(frozen=True)
class Requester:
    name: str                # the user name, or the client address when this route needs no login
    authenticated: bool
    admin: bool = False

    @property
    def owner(self) -> str:
        """The owner string a job submitted by this requester carries."""
        return f"user:{self.name}" if self.authenticated else f"client:{self.name}"

    def may_control(self, owner: str) -> bool:
        return self.admin or owner == self.owner

    def owner_filter(self) -> str | None:
        """What a job queue's `owner=` argument should be: None (any job) for admins, else this owner."""
        return None if self.admin else self.owner


def anonymous(client: str | None) -> Requester:
    return Requester(name=client or "unknown", authenticated=False)


def attach(scope: MutableMapping[str, Any], requester: Requester) -> None:
    scope.setdefault("state", {})[STATE_KEY] = requester


def requester_of(request: Any) -> Requester:
    """The requester of a Starlette/FastAPI request or a gr.Request; an anonymous one if nothing was attached."""
    found = None
    state = getattr(request, "state", None) if request is not None else None
    if state is not None:
        found = state.get(STATE_KEY) if isinstance(state, dict) else getattr(state, STATE_KEY, None)
    if isinstance(found, Requester):
        return found
    client = getattr(request, "client", None) if request is not None else None
    return anonymous(getattr(client, "host", None) if client is not None else None)
