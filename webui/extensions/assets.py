"""Extensions' javascript/*.js and style.css in the page.

The page head gets a <link> per style.css and a <script> per .js file (extensions in load order, files sorted
by name), passed to `gr.mount_gradio_app(head=…)`. The files are served by one route that answers only for
files inside the folders of the extensions enabled at startup, and only for static web file types.
"""
from __future__ import annotations

import html
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .registry import Extension

ROUTE = "/extension-assets"
STATIC_SUFFIXES = frozenset({".js", ".mjs", ".css", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp",
                             ".ico", ".woff", ".woff2", ".ttf", ".otf"})


@dataclass
class ExtensionAssets:
    extensions: list[Extension]   # only enabled ones are used

    def __post_init__(self) -> None:
        self.by_name = {ext.name: ext for ext in self.extensions if ext.enabled}

    @classmethod
    def for_app(cls, app) -> "ExtensionAssets":
        from .manager import ExtensionManager
        return cls(ExtensionManager.for_app(app).extensions())

    def url(self, ext: Extension, file: Path) -> str | None:
        """The route URL for a file of `ext`, or None when the route would refuse it (e.g. a symlink out)."""
        rel = file.relative_to(ext.path).as_posix()
        target = self.resolve(ext.name, rel)
        if target is None:
            return None
        version = target.stat().st_mtime_ns   # a changed file is fetched again, not taken from the browser cache
        return f"{ROUTE}/{quote(ext.name)}/{quote(rel)}?v={version}"

    def head_html(self) -> str:
        parts = []
        for ext in self.by_name.values():
            css = ext.stylesheet()
            url = self.url(ext, css) if css is not None else None
            if url:
                parts.append(f'<link rel="stylesheet" property="stylesheet" href="{html.escape(url)}" '
                             f'data-extension="{html.escape(ext.name)}">')
        for ext in self.by_name.values():
            for url in filter(None, (self.url(ext, js) for js in ext.javascript_files())):
                parts.append(f'<script type="text/javascript" src="{html.escape(url)}" '
                             f'data-extension="{html.escape(ext.name)}"></script>')
        return "\n".join(parts)

    def resolve(self, name: str, relative: str) -> Path | None:
        """The file to serve, or None unless it is a static web file inside an enabled extension's folder."""
        ext = self.by_name.get(name)
        if ext is None or not relative or "\x00" in relative:
            return None
        parts = Path(relative).parts
        if Path(relative).is_absolute() or any(part.startswith(".") for part in parts):   # .., .git, dotfiles
            return None
        root = ext.path.resolve()
        try:
            target = (root / relative).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not target.is_relative_to(root) or not target.is_file() or target.suffix.lower() not in STATIC_SUFFIXES:
            return None
        return target

    def mount(self, server) -> None:
        """Add the GET route to a FastAPI app (before Gradio is mounted at "/", which would catch it)."""
        from fastapi import HTTPException
        from fastapi.responses import FileResponse

        @server.get(ROUTE + "/{name}/{relative:path}", include_in_schema=False)
        def extension_asset(name: str, relative: str) -> FileResponse:
            target = self.resolve(name, relative)
            if target is None:
                raise HTTPException(status_code=404, detail="not found")
            media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            if target.suffix.lower() in (".js", ".mjs"):
                media_type = "text/javascript"
            return FileResponse(target, media_type=media_type, headers={"Cache-Control": "no-cache"})
