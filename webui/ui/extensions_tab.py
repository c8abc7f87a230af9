"""Extensions: the installed list with enable/disable, update checks and updates, install from a git URL, and
the errors extensions raised while loading.

Enabling and disabling are saved at once but take effect when the app restarts (scripts, callbacks and page
assets are loaded at start). Installing and updating are refused, with the reason shown, when the server
listens beyond localhost without --enable-insecure-extension-access; the manager enforces the same rule.
"""
from __future__ import annotations

import html as _html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..app import App
from ..extensions.manager import (REFUSAL_MESSAGE, ExtensionAccessRefused, ExtensionError, ExtensionManager,
                                  UpdateStatus)
from . import html

RESTART_NOTE = "Changes take effect after you restart the app."
PRIVATE = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
# Installs and updates change files on disk: one at a time, whoever clicks.
CHANGES = dict(api_visibility="private", concurrency_limit=1, concurrency_id="extension_changes",
               show_progress="minimal")


@dataclass
class ExtensionsTab:
    table: gr.HTML
    enabled: gr.CheckboxGroup
    apply: gr.Button
    check: gr.Button
    to_update: gr.CheckboxGroup
    update: gr.Button
    status: gr.HTML
    output: gr.Textbox
    errors: gr.HTML
    url: gr.Textbox
    branch: gr.Textbox
    folder: gr.Textbox
    install: gr.Button
    install_status: gr.HTML
    install_output: gr.Textbox
    statuses: gr.State


def manager_for(app: App) -> ExtensionManager:
    manager = app.state.get("extension_manager")
    if manager is None:
        manager = app.state["extension_manager"] = ExtensionManager.for_app(app)
    return manager


# ---- HTML ---------------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return f"<td>{_html.escape(text)}</td>"


def table_html(manager: ExtensionManager, statuses: dict[str, dict] | None = None) -> str:
    statuses = statuses or {}
    extensions = manager.extensions()
    if not extensions:
        return html.message(f"No extensions installed. Extensions folder: {manager.user_dir}")
    rows = []
    for ext in extensions:
        info = manager.git_info(ext)
        status = statuses.get(ext.name, {})
        update = status.get("message") or ("built in" if ext.builtin else "not checked")
        rows.append(f'<tr data-extension="{_html.escape(ext.name)}">' + "".join((
            _cell(ext.display_name + (" (built in)" if ext.builtin else "")),
            _cell("enabled" if ext.enabled else "disabled"),
            _cell(info.remote or str(ext.path)),
            _cell(" · ".join(filter(None, (info.version, info.branch))) or "—"),
            f'<td class="extension-update-{_html.escape(status.get("state", "none"))}">{_html.escape(update)}</td>',
        )) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Extension", "State", "Source", "Version", "Update"))
    return (f'<table class="studio-extensions" style="width:100%;text-align:left"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _field(record: Any, *names: str) -> str:
    for name in names:
        value = record.get(name) if isinstance(record, dict) else getattr(record, name, None)
        if value:
            return str(value)
    return ""


def errors_html(app: App) -> str:
    """Load and hook errors (`app.extensions.errors`, if the extension host exists) and preload.py errors."""
    host = getattr(app, "extensions", None)
    records = list(getattr(host, "errors", None) or [])
    records += list(getattr(app.args, "extension_preload_errors", None) or [])
    if not records:
        return html.message("No extension errors in this run.", "ok")
    items = []
    for record in records:
        name = _field(record, "extension", "name") or "?"
        where = " ".join(filter(None, (_field(record, "where", "hook"), _field(record, "script"))))
        text = _field(record, "traceback", "message", "error") or repr(record)
        items.append(f"<details><summary><b>{_html.escape(name)}</b> — {_html.escape(where)}</summary>"
                     f"<pre style='white-space:pre-wrap'>{_html.escape(text)}</pre></details>")
    header = html.message(f"{len(records)} extension error(s) in this run; the failing parts are disabled "
                          "until the next start.", "error")
    return header + "".join(items)


# ---- building -----------------------------------------------------------------------------------------

def _access_notice(manager: ExtensionManager) -> None:
    if not manager.allow_changes:
        gr.HTML(html.message(REFUSAL_MESSAGE, "warning"), elem_id="extensions_access_refused")


def build(app: App) -> ExtensionsTab:
    manager = manager_for(app)
    names = [ext.name for ext in manager.extensions()]
    enabled = [ext.name for ext in manager.extensions() if ext.enabled]
    _access_notice(manager)
    with gr.Tabs(elem_id="extensions_tabs"):
        with gr.Tab("Installed", id="extensions_installed"):
            with gr.Row():
                apply = gr.Button("Apply (restart needed)", variant="primary", elem_id="extensions_apply", scale=0,
                                  min_width=200)
                check = gr.Button("Check for updates", elem_id="extensions_check", scale=0, min_width=200)
            status = gr.HTML(html.message(f"Enabling and disabling: {RESTART_NOTE}"), elem_id="extensions_status")
            table = gr.HTML(lambda: table_html(manager), elem_id="extensions_table")
            enabled_box = gr.CheckboxGroup(names, value=enabled, label="Enabled extensions",
                                           elem_id="extensions_enabled")
            to_update = gr.CheckboxGroup([], value=[], label="Extensions to update (check for updates first)",
                                         elem_id="extensions_to_update")
            update = gr.Button("Update selected", elem_id="extensions_update", interactive=manager.allow_changes)
            output = gr.Textbox(label="Output", lines=8, max_lines=30, interactive=False, elem_id="extensions_output")
            gr.Markdown("### Load errors")
            errors = gr.HTML(lambda: errors_html(app), elem_id="extensions_errors")
            gr.Markdown(f"Extensions folder: `{manager.user_dir}` · built-in: `{manager.builtin_dir}`")
        with gr.Tab("Install from URL", id="extensions_install"):
            url = gr.Textbox(label="URL for extension's git repository", elem_id="extension_to_install",
                             interactive=manager.allow_changes)
            branch = gr.Textbox(label="Specific branch name", placeholder="Leave empty for the default branch",
                                elem_id="extension_branch", interactive=manager.allow_changes)
            folder = gr.Textbox(label="Local folder name", placeholder="Leave empty to use the repository's name",
                                elem_id="extension_folder", interactive=manager.allow_changes)
            install = gr.Button("Install", variant="primary", elem_id="install_extension_button",
                                interactive=manager.allow_changes)
            install_status = gr.HTML("", elem_id="install_extension_status")
            install_output = gr.Textbox(label="Output (git, pip, install.py)", lines=8, max_lines=30,
                                        interactive=False, elem_id="install_extension_output")
    tab = ExtensionsTab(table, enabled_box, apply, check, to_update, update, status, output, errors, url, branch,
                        folder, install, install_status, install_output, gr.State({}))
    _wire(app, manager, tab)
    return tab


# ---- handlers -----------------------------------------------------------------------------------------

def _status_dict(status: UpdateStatus) -> dict:
    return {"state": status.state, "message": status.message}


def _enabled_update(manager: ExtensionManager):
    exts = manager.extensions()
    return gr.update(choices=[e.name for e in exts], value=[e.name for e in exts if e.enabled])


def apply_enabled(manager: ExtensionManager, enabled: list[str], statuses: dict) -> tuple[str, str]:
    names = {ext.name for ext in manager.extensions()}
    disabled = manager.set_disabled(names - set(enabled or []))
    text = f"Saved. Disabled: {', '.join(disabled) or 'none'}. {RESTART_NOTE}"
    return html.message(text, "ok"), table_html(manager, statuses)


def check_updates(manager: ExtensionManager) -> tuple[str, str, Any, str, dict]:
    statuses = manager.check_updates()
    behind = [name for name, s in statuses.items() if s.update_available]
    as_dicts = {name: _status_dict(s) for name, s in statuses.items()}
    output = "\n\n".join(f"{name}: {s.message}\n{s.output}".rstrip() for name, s in statuses.items())
    summary = f"{len(behind)} update(s) available: {', '.join(behind)}" if behind else "No updates available."
    return (html.message(summary, "ok"), table_html(manager, as_dicts), gr.update(choices=behind, value=behind),
            output, as_dicts)


def update_selected(manager: ExtensionManager, selected: list[str], statuses: dict) -> tuple[str, str, str, dict]:
    if not selected:
        return html.message("Select the extensions to update first.", "warning"), gr.skip(), gr.skip(), statuses
    try:
        results = {name: manager.update(name) for name in selected}
    except (ExtensionAccessRefused, ExtensionError) as exc:
        return html.message(str(exc), "error"), gr.skip(), gr.skip(), statuses
    statuses = dict(statuses)
    for name, result in results.items():
        statuses[name] = {"state": "latest" if result.ok else "error",
                          "message": "updated (restart needed)" if result.ok else "update failed"}
    ok = all(r.ok for r in results.values())
    text = " ".join(r.message for r in results.values())
    output = "\n\n".join(f"== {name} ==\n{r.output}" for name, r in results.items())
    return html.message(text, "ok" if ok else "error"), output, table_html(manager, statuses), statuses


def install_from_url(manager: ExtensionManager, url: str, branch: str, folder: str, statuses: dict):
    try:
        result = manager.install(url, branch or None, folder or None)
    except (ExtensionAccessRefused, ExtensionError) as exc:
        return html.message(str(exc), "error"), "", gr.skip(), gr.skip()
    kind = "ok" if result.ok else "error"
    return (html.message(result.message, kind), result.output, table_html(manager, statuses),
            _enabled_update(manager))


def _wire(app: App, manager: ExtensionManager, tab: ExtensionsTab) -> None:
    tab.apply.click(lambda enabled, st: apply_enabled(manager, enabled, st), [tab.enabled, tab.statuses],
                    [tab.status, tab.table], **PRIVATE)
    tab.check.click(lambda: check_updates(manager), None,
                    [tab.status, tab.table, tab.to_update, tab.output, tab.statuses], **CHANGES)
    tab.update.click(lambda sel, st: update_selected(manager, sel, st), [tab.to_update, tab.statuses],
                     [tab.status, tab.output, tab.table, tab.statuses], **CHANGES)
    tab.install.click(lambda u, b, f, st: install_from_url(manager, u, b, f, st),
                      [tab.url, tab.branch, tab.folder, tab.statuses],
                      [tab.install_status, tab.install_output, tab.table, tab.enabled], **CHANGES)
