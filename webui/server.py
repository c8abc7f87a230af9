"""Assembles the HTTP server: the Gradio UI and (with --api or --nowebui) the /sdapi/v1 API on one FastAPI app."""
from __future__ import annotations

import argparse
import logging
import sys

from fastapi import FastAPI

from .api.limits import install_limits
from .app import App
from .cli import DEFAULT_API_PORT, DEFAULT_PORT
from .security import CredentialError, SecurityPolicy, install as install_security
from .security.exposure import bind_address

log = logging.getLogger(__name__)


def build_fastapi(app: App, with_ui: bool, with_api: bool, policy: SecurityPolicy | None = None) -> FastAPI:
    policy = policy or SecurityPolicy.from_args(app.args or argparse.Namespace())
    server = FastAPI(title="Stable Diffusion studio", version="0.1.0")

    @server.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    if with_api:
        from .api.routes import mount_api
        mount_api(server, app)
    app.extensions.app_started(server)   # before Gradio's catch-all mount, so extension routes are reachable
    if with_ui:
        import gradio as gr

        from .api.file_guard import FileRouteGuard, gradio_file_options
        from .extensions.assets import ExtensionAssets
        from .ui.blocks import build_ui
        assets = ExtensionAssets.for_app(app)   # extensions' javascript/*.js and style.css
        assets.mount(server)
        blocks = build_ui(app)
        server = gr.mount_gradio_app(server, blocks, path="/", head=assets.head_html(),
                                     auth_dependency=policy.auth.gradio_dependency(),
                                     **gradio_file_options(app.storage.outputs_dir))
        server.add_middleware(FileRouteGuard)
    install_limits(server, app.settings)
    install_security(server, policy)   # last, so its layers sit outside every other one
    return server


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .security.exposure import exposure_warning
    try:
        policy = SecurityPolicy.from_args(args)
    except CredentialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warning = exposure_warning(args)
    if warning:
        print(f"\n{'!' * 80}\nWARNING: {warning}\n{'!' * 80}\n", file=sys.stderr, flush=True)
    app = App.create(args)
    with_ui = not args.nowebui
    with_api = args.api or args.nowebui
    port = args.port or (DEFAULT_API_PORT if args.nowebui else DEFAULT_PORT)
    server = build_fastapi(app, with_ui=with_ui, with_api=with_api, policy=policy)
    host = bind_address(args)
    log.info("serving on http://%s:%d (UI: %s, API: %s)", host, port, with_ui, with_api)
    print(f"Running on http://{host}:{port}", flush=True)
    try:
        uvicorn.run(server, host=host, port=port, log_level="warning")
    finally:
        app.queue.shutdown()
        app.extensions.unload()   # extensions' on_script_unloaded
    return 0
