"""Which App the A1111 globals (`shared.opts`, `shared.state`, …) refer to.

Inside extension code run by a host (a script import, a hook, a callback) that host's App is used and
remembered; anywhere else (a Gradio event handler, a thread the extension started) the App remembered last.
So the shim supports one App per process, like A1111 itself.
"""
from __future__ import annotations

import weakref
from typing import Any

_last: dict[str, Any] = {"app": None}   # a weak reference to the App seen last


def _scope():
    from webui.extensions.host import current_scope

    try:
        return current_scope()
    except RuntimeError:
        return None


def app():
    """The App of the running extension host, else the last one seen; RuntimeError before any."""
    scope = _scope()
    if scope is not None:
        _last["app"] = weakref.ref(scope.host.app)
        return scope.host.app
    ref = _last["app"]
    found = ref() if ref is not None else None
    if found is None:
        raise RuntimeError("the A1111 compatibility modules work once the app has loaded extensions")
    return found


def app_or_none():
    try:
        return app()
    except RuntimeError:
        return None


def host():
    return app().extensions


def extension_name() -> str:
    scope = _scope()
    return scope.extension if scope is not None else ""


def current_job():
    """The JobRuntime of the job the host is running, or None (the host keeps it while a job runs)."""
    found = app_or_none()
    if found is None or found.extensions is None:
        return None
    return getattr(found.extensions, "_job", None)
