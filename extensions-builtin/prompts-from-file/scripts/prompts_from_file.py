"""Prompts from file or textbox: one generation per line, a line may set its own options (--steps 10 …).

A built-in script on the public hook API; line parsing lives in webui/scripts_logic/prompts_file.py.
Script args (A1111's order): checkbox_iterate, checkbox_iterate_batch, prompt_position ("start"/"end"),
prompt_txt. The UI's file upload fills the textbox.
"""
from __future__ import annotations

from webui.engine.errors import InvalidParameterError
from webui.extensions_api import Processed, Script, current_app, process_images
from webui.scripts_logic import prompts_file, xyz
from webui.scripts_logic.progress import job_part

# line options that are A1111 fields this app has no use for (accepted and ignored)
IGNORED = {"outpath_samples", "outpath_grids", "prompt_for_display", "restore_faces", "tiling",
           "do_not_save_samples", "do_not_save_grid"}


class PromptsFromFile(Script):
    def title(self) -> str:
        return "Prompts from file or textbox"

    def show(self, is_img2img: bool):
        return True

    def ui(self, is_img2img: bool):
        import gradio as gr

        checkbox_iterate = gr.Checkbox(label="Iterate seed every line", value=False,
                                       elem_id=self.elem_id("checkbox_iterate"))
        checkbox_iterate_batch = gr.Checkbox(label="Use same random seed for all lines", value=False,
                                             elem_id=self.elem_id("checkbox_iterate_batch"))
        prompt_position = gr.Radio(["start", "end"], label="Insert prompts at the", value="start",
                                   elem_id=self.elem_id("prompt_position"))
        prompt_txt = gr.Textbox(label="List of prompt inputs", lines=2, elem_id=self.elem_id("prompt_txt"))
        upload = gr.File(label="Upload prompt inputs", type="binary", elem_id=self.elem_id("file"))

        def load_file(data):
            if data is None:
                return gr.update()
            text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
            return gr.update(value=text)

        upload.change(load_file, [upload], [prompt_txt])
        return [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]

    def run(self, p, checkbox_iterate=False, checkbox_iterate_batch=False, prompt_position="start", prompt_txt=""):
        if prompt_position not in ("start", "end"):
            raise InvalidParameterError("script_args", f"prompt position must be start or end (got {prompt_position!r})")
        jobs = prompts_file.parse_lines(prompt_txt or "")
        if not jobs:
            raise InvalidParameterError("script_args", "the list of prompt inputs is empty")
        if prompts_file.job_count(jobs, p.n_iter) > xyz.MAX_CELLS:
            raise InvalidParameterError("script_args", f"more than {xyz.MAX_CELLS} jobs")
        if (checkbox_iterate or checkbox_iterate_batch) and p.seed == -1:
            xyz.fix_seed(p)
        images, infotexts = [], []
        lists = {"all_prompts": [], "all_negative_prompts": [], "all_seeds": [], "all_subseeds": []}
        interrupted = False
        for i, job in enumerate(jobs):
            if p.runtime is not None and p.runtime.interrupted:
                interrupted = True
                break
            pc = self._job_params(p, job, prompt_position)
            with job_part(p, i, len(jobs)):
                processed = process_images(pc)
            interrupted = interrupted or processed.interrupted
            images += processed.images
            infotexts += processed.infotexts
            for name, values in lists.items():
                values += getattr(processed, name)
            if checkbox_iterate:
                p.seed = p.seed + p.batch_size * p.n_iter
        out = Processed(p, images, seed=p.seed, info=infotexts[0] if infotexts else "", infotexts=infotexts, **lists)
        out.interrupted = interrupted
        return out

    @staticmethod
    def _job_params(p, job: prompts_file.LineJob, position: str):
        pc = p.copy()
        options = dict(job.options)
        for key, value in options.items():
            if key in IGNORED or key in ("prompt", "negative_prompt"):
                continue
            if key == "sd_model":
                pc.override_settings["sd_model_checkpoint"] = value
            elif key == "sampler_index":
                names = current_app().engine.samplers.names()
                if not 0 <= value < len(names):
                    raise InvalidParameterError("script_args", f"line {job.line!r}: no sampler number {value}")
                pc.sampler_name = names[value]
            elif key == "sampler_name":
                info = current_app().engine.samplers.find(value)
                if info is None:
                    raise InvalidParameterError("script_args", f"line {job.line!r}: unknown sampler {value!r}")
                pc.sampler_name = info.name
            elif key == "styles":
                pc.styles = [s.strip() for s in value.split(",") if s.strip()]
            else:
                setattr(pc, key, value)
        pc.prompt = prompts_file.combine_prompt(p.prompt, options.get("prompt"), position)
        pc.negative_prompt = prompts_file.combine_prompt(p.negative_prompt, options.get("negative_prompt"), position)
        return pc
