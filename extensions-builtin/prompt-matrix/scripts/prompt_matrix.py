"""Prompt matrix: `a cat | red | big` makes every combination of the optional parts, drawn as a labelled grid.

A built-in script on the public hook API. Script args (A1111's order): put_at_start, different_seeds,
prompt_type ("positive"/"negative"), variations_delimiter ("comma"/"space"), margin_size.
"""
from __future__ import annotations

from webui.engine.errors import InvalidParameterError
from webui.extensions_api import Processed, Script, process_images
from webui.scripts_logic import prompt_matrix, xyz
from webui.scripts_logic.progress import job_part


class PromptMatrix(Script):
    def title(self) -> str:
        return "Prompt matrix"

    def show(self, is_img2img: bool):
        return True

    def ui(self, is_img2img: bool):
        import gradio as gr

        gr.HTML("<p>Separate the parts with <code>|</code>: <code>a cat | red | big</code> makes "
                "every combination of the parts after the first.</p>")
        with gr.Row():
            with gr.Column():
                put_at_start = gr.Checkbox(label="Put variable parts at start of prompt", value=False,
                                           elem_id=self.elem_id("put_at_start"))
                different_seeds = gr.Checkbox(label="Use different seed for each picture", value=False,
                                              elem_id=self.elem_id("different_seeds"))
            with gr.Column():
                prompt_type = gr.Radio(["positive", "negative"], label="Select prompt", value="positive",
                                       elem_id=self.elem_id("prompt_type"))
                variations_delimiter = gr.Radio(["comma", "space"], label="Select joining char", value="comma",
                                                elem_id=self.elem_id("variations_delimiter"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))
        return [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]

    def run(self, p, put_at_start=False, different_seeds=False, prompt_type="positive",
            variations_delimiter="comma", margin_size=0):
        if prompt_type not in ("positive", "negative"):
            raise InvalidParameterError("script_args", f"prompt type must be positive or negative (got {prompt_type!r})")
        if variations_delimiter not in prompt_matrix.DELIMITERS:
            raise InvalidParameterError("script_args", f"joining char must be comma or space "
                                                       f"(got {variations_delimiter!r})")
        xyz.fix_seed(p)
        source = p.prompt if prompt_type == "positive" else p.negative_prompt
        prompts = prompt_matrix.combinations(source, bool(put_at_start), variations_delimiter)
        n = len(prompts)
        if n > xyz.MAX_CELLS:
            raise InvalidParameterError("prompt", f"the matrix would make {n} images; the limit is {xyz.MAX_CELLS}")
        seeds = [p.seed + (i if different_seeds else 0) for i in range(n)]
        images, infotexts, lists = [], [], {"all_prompts": [], "all_negative_prompts": [], "all_seeds": [],
                                            "all_subseeds": []}
        interrupted = False
        # one process_images call per prompt: the engine builds p.all_prompts from p.prompt, so a batch cannot
        # mix prompts from a selectable script (A1111 passes a list as p.prompt instead)
        for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
            if p.runtime is not None and p.runtime.interrupted:
                interrupted = True
                break
            pc = p.copy()
            pc.batch_size, pc.n_iter, pc.seed = 1, 1, seed
            if prompt_type == "positive":
                pc.prompt = prompt
            else:
                pc.negative_prompt = prompt
            with job_part(p, i, n):
                processed = process_images(pc)
            interrupted = interrupted or processed.interrupted
            images += processed.images[:1]
            infotexts += processed.infotexts[:1]
            for name, values in lists.items():
                values += getattr(processed, name)[:1]
        if not images:
            out = Processed(p, [], info="")
            out.interrupted = True
            return out
        grid = self._grid(images, source, n, int(margin_size or 0))
        out = Processed(p, [grid] + images, seed=p.seed, info=infotexts[0], index_of_first_image=1,
                        infotexts=[infotexts[0]] + infotexts, **lists)
        out.interrupted = interrupted
        return out

    @staticmethod
    def _grid(images, source: str, n: int, margin: int):
        if len(images) < n:   # interrupted: fill the missing cells with blanks of the same size
            from PIL import Image
            blank = Image.new("RGB", images[0].size, "white")
            images = images + [blank] * (n - len(images))
        return prompt_matrix.draw_matrix(images[:n], source, margin=margin)
