"""Assembles the HTTP server: the Gradio UI and (with --api or --nowebui) the /sdapi/v1 API on one FastAPI app."""
from __future__ import annotations

import argparse
import logging

from fastapi import FastAPI

from .app import App
from .cli import DEFAULT_API_PORT, DEFAULT_PORT

log = logging.getLogger(__name__)


def bind_address(args: argparse.Namespace) -> str:
    if args.server_name:
        return args.server_name
    return "0.0.0.0" if args.listen else "127.0.0.1"


def build_fastapi(app: App, with_ui: bool, with_api: bool) -> FastAPI:
    server = FastAPI(title="Stable Diffusion studio", version="0.1.0")

    @server.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    if with_api:
        from .api.routes import mount_api
        mount_api(server, app)
    if with_ui:
        import gradio as gr

        from .ui.blocks import build_ui
        blocks = build_ui(app)
        server = gr.mount_gradio_app(server, blocks, path="/")
    return server


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    app = App.create(args)
    with_ui = not args.nowebui
    with_api = args.api or args.nowebui
    port = args.port or (DEFAULT_API_PORT if args.nowebui else DEFAULT_PORT)
    server = build_fastapi(app, with_ui=with_ui, with_api=with_api)
    host = bind_address(args)
    log.info("serving on http://%s:%d (UI: %s, API: %s)", host, port, with_ui, with_api)
    print(f"Running on http://{host}:{port}", flush=True)
    try:
        uvicorn.run(server, host=host, port=port, log_level="warning")
    finally:
        app.queue.shutdown()
    return 0
