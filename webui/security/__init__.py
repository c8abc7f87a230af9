"""Protections for an instance shared on a network: logins, the Host and Origin checks, CORS, security headers,
and who owns which job. docs/security.md says what each command-line flag gates.

The layers, outermost first (every request passes them in this order, before any route):
security headers → Host check → CORS → same-origin check for writes → login → the app (API routes, Gradio).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from .auth import AuthMiddleware, AuthPolicy, CredentialError
from .headers import SecurityHeadersMiddleware, add_cors, origin_policy
from .hosts import HostCheckMiddleware, HostPolicy, OriginPolicy, SameOriginMiddleware
from .owners import Requester, requester_of

__all__ = ["SecurityPolicy", "install", "CredentialError", "Requester", "requester_of"]


@dataclass
class SecurityPolicy:
    auth: AuthPolicy
    hosts: HostPolicy
    origins: OriginPolicy

    @classmethod
    def from_args(cls, args: Any) -> "SecurityPolicy":
        """Raises CredentialError for malformed credentials or an unreadable --gradio-auth-path."""
        return cls(AuthPolicy.from_args(args), HostPolicy.from_args(args), origin_policy(args))


def install(server: FastAPI, policy: SecurityPolicy) -> None:
    """Put the layers in front of every route of `server`, including a Gradio app mounted on it."""
    # add_middleware puts each new layer outside the earlier ones, so add from the innermost.
    server.add_middleware(AuthMiddleware, policy=policy.auth)
    server.add_middleware(SameOriginMiddleware, policy=policy.origins)
    add_cors(server, policy.origins)
    server.add_middleware(HostCheckMiddleware, policy=policy.hosts)
    server.add_middleware(SecurityHeadersMiddleware)
