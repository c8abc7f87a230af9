"""Is this server reachable from other machines, and is anything open there without a password?"""
from __future__ import annotations

import argparse

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def bind_address(args: argparse.Namespace) -> str:
    """The address the server binds: --server-name, else 0.0.0.0 with --listen, else 127.0.0.1."""
    name = getattr(args, "server_name", None)
    if name:
        return name
    return "0.0.0.0" if getattr(args, "listen", False) else "127.0.0.1"


def server_is_exposed(args: argparse.Namespace) -> bool:
    """True when other machines can connect: --listen, or --server-name with a non-loopback address.
    (The extension manager's rule, reused so the two never disagree.)"""
    from ..extensions.manager import server_exposed
    return server_exposed(bool(getattr(args, "listen", False)), getattr(args, "server_name", None))


def ui_auth_configured(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "gradio_auth", None) or getattr(args, "gradio_auth_path", None))


def any_auth_configured(args: argparse.Namespace) -> bool:
    return ui_auth_configured(args) or bool(getattr(args, "api_auth", None))


def exposure_warning(args: argparse.Namespace) -> str | None:
    """What is open to the network without a password, or None when nothing is."""
    if not server_is_exposed(args):
        return None
    with_ui = not getattr(args, "nowebui", False)
    if with_ui and not ui_auth_configured(args):
        from ..extensions.manager import extension_access_allowed
        extensions = "" if extension_access_allowed(args) else " Extension install and update are disabled."
        return (f"This server listens on {bind_address(args)} without --gradio-auth: anyone on your network can use "
                f"it, change its settings and read its outputs.{extensions} See docs/security.md.")
    if not with_ui and not any_auth_configured(args):
        return (f"This API server listens on {bind_address(args)} without --api-auth: anyone on your network can "
                "use it. See docs/security.md.")
    return None
