"""The extra-networks picker: LoRA and textual-inversion files as cards; a click adds one to the prompt.

Clicking a LoRA card inserts `<lora:name:1>` (A1111's syntax) and shows the file's training metadata
(`ss_*` keys). The lists come from the engine (`list_loras`, its embedding library), which applies the tags.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..app import App

PRIVATE = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")


@dataclass
class ExtraNetworks:
    lora: gr.Dataset
    embeddings: gr.Dataset
    refresh: gr.Button
    lora_metadata: gr.JSON


def lora_names(app: App, refresh: bool = False) -> list[str]:
    return sorted({f.name for f in app.engine.list_loras(refresh=refresh)}, key=str.lower)


def lora_metadata(app: App, name: str) -> dict:
    """The training metadata (ss_* keys) and alias of a LoRA, for the card picker."""
    file = app.engine.networks.library.find(name)
    if file is None:
        return {}
    meta = {k: v for k, v in file.metadata.items() if k.startswith("ss_")}
    return {"alias": file.alias, "path": str(file.path), **meta}


def embedding_names(app: App) -> list[str]:
    return sorted(app.engine.embeddings.all(), key=str.lower)


def insert_tag(prompt: str, tag: str) -> str:
    """Append a tag to the prompt unless it is already there."""
    prompt = prompt or ""
    if tag in prompt:
        return prompt
    return f"{prompt.rstrip()} {tag}".strip() if prompt.strip() else tag


def _dataset(names: list[str], label: str, elem_id: str) -> gr.Dataset:
    return gr.Dataset(components=[gr.Textbox(render=False)], samples=[[n] for n in names], label=label,
                      elem_id=elem_id, samples_per_page=40, type="values")


def build(app: App, tab: str, prompt: gr.Textbox) -> ExtraNetworks:
    with gr.Accordion("Extra networks", open=False, elem_id=f"{tab}_extra_networks"):
        with gr.Row():
            gr.Markdown(f"Click a card to add it to the prompt. LoRA folder: `{app.engine.paths.lora_dir}`")
            refresh = gr.Button("🔄 Refresh", elem_id=f"{tab}_extra_refresh", size="sm", scale=0, min_width=120)
        with gr.Tabs(elem_id=f"{tab}_extra_tabs"):
            with gr.Tab("Lora", id=f"{tab}_lora"):
                lora = _dataset(lora_names(app), "Lora", f"{tab}_lora_cards")
                metadata = gr.JSON(label="Metadata of the last LoRA clicked", elem_id=f"{tab}_lora_metadata")
            with gr.Tab("Textual Inversion", id=f"{tab}_textual_inversion"):
                embeddings = _dataset(embedding_names(app), "Textual Inversion", f"{tab}_textual_inversion_cards")
    picker = ExtraNetworks(lora, embeddings, refresh, metadata)
    _wire(app, picker, prompt)
    return picker


def _wire(app: App, picker: ExtraNetworks, prompt: gr.Textbox) -> None:
    def add_lora(sample: list, text: str) -> tuple[str, dict]:
        return insert_tag(text, f"<lora:{sample[0]}:1>"), lora_metadata(app, sample[0])

    def add_embedding(sample: list, text: str) -> str:
        return insert_tag(text, sample[0])

    def refresh():
        return (gr.Dataset(samples=[[n] for n in lora_names(app, refresh=True)]),
                gr.Dataset(samples=[[n] for n in embedding_names(app)]))

    picker.lora.click(add_lora, [picker.lora, prompt], [prompt, picker.lora_metadata], **PRIVATE)
    picker.embeddings.click(add_embedding, [picker.embeddings, prompt], prompt, **PRIVATE)
    picker.refresh.click(refresh, None, [picker.lora, picker.embeddings], **PRIVATE)
