"""Small HTML fragments the UI shows: status messages and the progress bar. Inline styles only, because the
page's stylesheet belongs to whoever mounts the app."""
from __future__ import annotations

import html

_COLOURS = {"info": "var(--body-text-color-subdued, #666)", "ok": "#15803d", "warning": "#b45309",
            "error": "#dc2626"}


def message(text: str, kind: str = "info") -> str:
    colour = _COLOURS.get(kind, _COLOURS["info"])
    return f'<div class="studio-message studio-{kind}" style="color:{colour};white-space:pre-wrap">{html.escape(text)}</div>'


def not_available(what: str, issue: str | None = None) -> str:
    where = f" (tracked in issue {issue})" if issue else ""
    return message(f"{what} is not available yet{where}. Nothing was generated.", "warning")


def progress_bar(fraction: float, text: str) -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    return (
        '<div class="studio-progress">'
        '<div style="height:18px;border-radius:4px;overflow:hidden;background:var(--neutral-200, #e5e7eb)">'
        f'<div class="studio-progress-fill" style="height:100%;width:{percent:.1f}%;'
        'background:var(--color-accent, #f97316);transition:width .3s"></div></div>'
        f'<div class="studio-progress-text" style="font-size:0.9em;margin-top:2px">{html.escape(text)}</div>'
        '</div>'
    )


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
