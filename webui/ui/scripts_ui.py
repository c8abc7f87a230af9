"""Extension scripts in a generation tab, and extension tabs.

The "Script" dropdown lists the tab's selectable scripts; each one's `ui()` components sit in a group shown
only while it is selected. Always-on scripts' `ui()` components follow below. On Generate, the values of all
these components become a `ScriptSelection` (the selected script's args, and each always-on script's args).
"""
from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field

import gradio as gr

from ..app import App
from ..extensions.scripts import Script, ScriptSelection

NONE = "None"


@dataclass
class ScriptsUI:
    dropdown: gr.Dropdown | None
    components: list = field(default_factory=list)           # every script component, in creation order
    slices: list[tuple[str, bool, int, int]] = field(default_factory=list)   # (title, alwayson, start, end)

    def inputs(self) -> list:
        return ([self.dropdown] if self.dropdown is not None else []) + self.components

    def selection(self, values: list | tuple) -> ScriptSelection:
        """The request for the scripts, from the values of `inputs()` (in that order)."""
        values = list(values)
        choice = values.pop(0) if self.dropdown is not None else NONE
        out = ScriptSelection()
        for title, alwayson, start, end in self.slices:
            args = values[start:end]
            if alwayson:
                out.alwayson[title] = args
            elif title == choice:
                out.name, out.args = title, args
        return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _script_components(app: App, script: Script, is_img2img: bool) -> list | None:
    """The components of `ui()`; None if it failed (the extension is then disabled)."""
    host = app.extensions
    made = host.guard(script.extension, "ui", script.ui, is_img2img)
    if script.extension in host.disabled:
        return None
    if made is None:
        return []
    made = made if isinstance(made, (list, tuple)) else [made]
    return [c for c in made if isinstance(c, gr.components.Component)]


def build(app: App, tab: str) -> ScriptsUI:
    """Create the script controls inside the current layout (the settings column of a generation tab)."""
    host = app.extensions
    runner = host.runner(tab)
    selectable, alwayson = runner.selectable_scripts, runner.alwayson_scripts
    ui = ScriptsUI(None)
    if selectable:
        titles = [host.title_of(s) for s in selectable]
        ui.dropdown = gr.Dropdown([NONE] + titles, value=NONE, label="Script", elem_id=f"{tab}_script_list")
        groups, shown = [], []
        for script, title in zip(selectable, titles):
            with gr.Group(visible=False, elem_id=f"{tab}_script_{_slug(title)}") as group:
                if _add(app, ui, script, title, False, runner.is_img2img):
                    groups.append(group)
                    shown.append(title)
        ui.dropdown.change(lambda choice: [gr.update(visible=t == choice) for t in shown], ui.dropdown, groups,
                           show_progress="hidden", api_visibility="private", concurrency_limit=None)
    for script in alwayson:
        title = host.title_of(script)
        with gr.Group(elem_id=f"{tab}_script_{_slug(title)}"):
            _add(app, ui, script, title, True, runner.is_img2img)
    return ui


def _add(app: App, ui: ScriptsUI, script: Script, title: str, alwayson: bool, is_img2img: bool) -> bool:
    components = _script_components(app, script, is_img2img)
    if components is None:
        return False
    start = len(ui.components)
    ui.components += components
    ui.slices.append((title, alwayson, start, len(ui.components)))
    script.args_from, script.args_to = start + 1, len(ui.components) + 1   # A1111: index 0 is the dropdown
    return True


def build_extension_tabs(app: App) -> None:
    """The tabs extensions add with on_ui_tabs, inside the current gr.Tabs."""
    host = app.extensions
    for entry in host.ui_tabs():
        blocks, title = entry[0], str(entry[1])
        elem_id = str(entry[2]) if len(entry) > 2 and entry[2] else _slug(title)
        try:
            with gr.Tab(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                blocks.render()
        except Exception:
            host.fail("", f"ui tab {title!r}", traceback.format_exc())
