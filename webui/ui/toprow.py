"""The prompt area of a generation tab: prompt, negative prompt, and Generate / Interrupt / Skip."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr


@dataclass
class Toprow:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button


def build(tab: str) -> Toprow:
    with gr.Row(elem_id=f"{tab}_toprow", equal_height=False):
        with gr.Column(scale=6, elem_id=f"{tab}_prompt_container"):
            prompt = gr.Textbox(label="Prompt", elem_id=f"{tab}_prompt", lines=3, max_lines=12,
                                placeholder="Prompt")
            negative = gr.Textbox(label="Negative prompt", elem_id=f"{tab}_neg_prompt", lines=2, max_lines=12,
                                  placeholder="Negative prompt")
        with gr.Column(scale=1, min_width=250, elem_id=f"{tab}_actions_column"):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate", size="lg")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", variant="stop", min_width=110)
                skip = gr.Button("Skip", elem_id=f"{tab}_skip", variant="secondary", min_width=110)
    return Toprow(prompt, negative, generate, interrupt, skip)
