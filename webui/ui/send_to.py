""""Send to" buttons: move an image and its generation parameters to another tab, and switch to that tab."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..app import App
from ..engine.infotext import parse_infotext
from .fields import clip_skip_from_infotext, fields_from_infotext
from .generation_tab import GenerationTab
from .output_panel import selected_value
from .pnginfo_tab import PngInfoTab

PRIVATE = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")


def switch_tab_js(tab_id: str) -> str:
    """Select a tab in the browser. A `gr.Tabs(selected=…)` update would do, but in Gradio 6.31 it makes every
    mounted ImageEditor throw "reading 'get_data'" in the page, so tabs are switched by clicking their button."""
    return f"() => {{ document.getElementById('tab_{tab_id}-button')?.click(); }}"


def _then_switch(event, tab_id: str) -> None:
    event.then(None, None, None, js=switch_tab_js(tab_id), api_visibility="private", show_progress="hidden")


@dataclass
class Targets:
    txt2img: GenerationTab
    img2img: GenerationTab
    extras_image: gr.Image   # the Extras tab's source image
    clip_skip: gr.Slider


def paste_updates(app: App, tab: GenerationTab, infotext: str, image: Any = None) -> list:
    """Updates for `tab.inputs() + [clip_skip]`: values found in the infotext, the rest left as they are."""
    parsed = parse_infotext(infotext) if infotext else {}
    if parsed:   # extensions may read or add fields (A1111's on_infotext_pasted)
        parsed = app.extensions.infotext_pasted(infotext, parsed)
    values = fields_from_infotext(parsed, app.engine.samplers.names(), app.engine.schedules.labels(),
                                  img2img=tab.name == "img2img") if parsed else {}
    if image is not None and "init_image" in tab.fields:
        values["init_image"] = image
    updates = [values[name] if name in values else gr.skip() for name in tab.field_names]
    clip = clip_skip_from_infotext(parsed) if parsed else None
    return updates + [clip if clip is not None else gr.skip()]


def gallery_image(gallery: list | None, index: int) -> str | None:
    """The file of one gallery item; Gradio hands the gallery over as [(path, caption), ...]."""
    if not gallery:
        return None
    item = gallery[index] if 0 <= index < len(gallery) else gallery[0]
    return item[0] if isinstance(item, (tuple, list)) else item


def wire(app: App, t: Targets, pnginfo: PngInfoTab) -> None:
    _wire_pnginfo(app, t, pnginfo)
    for source in (t.txt2img, t.img2img):
        _wire_gallery(app, t, source)


def _to_generation(app: App, t: Targets, target: GenerationTab):
    outputs = target.inputs() + [t.clip_skip]

    def send(infotext: str, image: Any):
        return paste_updates(app, target, infotext, image)
    return send, outputs


def _image_targets(t: Targets) -> dict[str, tuple[Any, str]]:
    return {"extras": (t.extras_image, "extras")}


def _wire_pnginfo(app: App, t: Targets, png: PngInfoTab) -> None:
    for target in (t.txt2img, t.img2img):
        send, outputs = _to_generation(app, t, target)
        event = png.send[target.name].click(send, [png.parameters, png.image], outputs, **PRIVATE)
        _then_switch(event, target.name)
    for name, (component, tab_id) in _image_targets(t).items():
        event = png.send[name].click(lambda image: image, png.image, component, **PRIVATE)
        _then_switch(event, tab_id)


def _wire_gallery(app: App, t: Targets, source: GenerationTab) -> None:
    out = source.out
    selection = [out.gallery, out.selected, out.result]

    send, outputs = _to_generation(app, t, t.img2img)

    def to_img2img(gallery, selected, result):
        image = gallery_image(gallery, selected)
        if image is None:
            return [gr.skip()] * len(outputs)
        return send(selected_value(result, selected, "infotexts") or "", image)

    _then_switch(out.send["img2img"].click(to_img2img, selection, outputs, **PRIVATE), "img2img")
    for name, (component, tab_id) in _image_targets(t).items():
        def to_image(gallery, selected):
            image = gallery_image(gallery, selected)
            return gr.skip() if image is None else image
        _then_switch(out.send[name].click(to_image, [out.gallery, out.selected], component, **PRIVATE), tab_id)
