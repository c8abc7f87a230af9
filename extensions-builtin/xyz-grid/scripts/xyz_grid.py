"""X/Y/Z plot: one image per combination of up to three axes of values, drawn as a labelled grid.

A built-in script on the public hook API (webui/extensions_api.py); the value syntax, axis types and grid
drawing live in webui/scripts_logic/xyz.py. Script args (A1111's order, so API clients can reuse theirs):
x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values, z_values_dropdown,
draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y,
vary_seeds_z, margin_size, csv_mode. An axis type is an index into the axis list or its label ("Steps").
"""
from __future__ import annotations

from typing import Any

from webui.extensions_api import Processed, Script, current_app, process_images
from webui.scripts_logic import xyz
from webui.scripts_logic.progress import job_part

AXES = ("x", "y", "z")


class XYZPlot(Script):
    def title(self) -> str:
        return "X/Y/Z plot"

    def show(self, is_img2img: bool):
        return True

    def ui(self, is_img2img: bool):
        import gradio as gr

        app = current_app()
        options = xyz.axis_options(is_img2img)
        labels = [o.label for o in options]

        def choices_for(index, csv_mode) -> list[str] | None:
            try:
                opt = xyz.find_option(options, index)
            except xyz.AxisError:
                return None
            if opt.choices is None or csv_mode:
                return None
            return opt.choices(xyz.context_for(app.engine))

        def select_axis(index, csv_mode):
            choices = choices_for(index, csv_mode)
            if choices is None:
                return gr.update(visible=True), gr.update(visible=False, choices=[], value=[])
            return gr.update(visible=False), gr.update(visible=True, choices=choices, value=[])

        rows = []
        for axis, default in zip(AXES, (labels[1], labels[0], labels[0])):
            with gr.Row():
                kind = gr.Dropdown(label=f"{axis.upper()} type", choices=labels, value=default, type="index",
                                   elem_id=self.elem_id(f"{axis}_type"))
                values = gr.Textbox(label=f"{axis.upper()} values", lines=1, elem_id=self.elem_id(f"{axis}_values"))
                dropdown = gr.Dropdown(label=f"{axis.upper()} values", choices=[], value=[], multiselect=True,
                                       visible=False, interactive=True,
                                       elem_id=self.elem_id(f"{axis}_values_dropdown"))
            rows.append((kind, values, dropdown))
        with gr.Row():
            with gr.Column():
                draw_legend = gr.Checkbox(label="Draw legend", value=True, elem_id=self.elem_id("draw_legend"))
                no_fixed_seeds = gr.Checkbox(label="Keep -1 for seeds", value=False,
                                             elem_id=self.elem_id("no_fixed_seeds"))
                vary = [gr.Checkbox(label=f"Vary seeds for {axis.upper()}", value=False,
                                    elem_id=self.elem_id(f"vary_seeds_{axis}")) for axis in AXES]
            with gr.Column():
                include_lone_images = gr.Checkbox(label="Include Sub Images", value=True,
                                                  elem_id=self.elem_id("include_lone_images"))
                include_sub_grids = gr.Checkbox(label="Include Sub Grids", value=False,
                                                elem_id=self.elem_id("include_sub_grids"))
                csv_mode = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False,
                                       elem_id=self.elem_id("csv_mode"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))
        for kind, values, dropdown in rows:
            kind.change(select_axis, [kind, csv_mode], [values, dropdown])
            csv_mode.change(select_axis, [kind, csv_mode], [values, dropdown])
        flat = [c for row in rows for c in row]
        return flat + [draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, *vary, margin_size,
                       csv_mode]

    def run(self, p, x_type=1, x_values="", x_values_dropdown=None, y_type=0, y_values="", y_values_dropdown=None,
            z_type=0, z_values="", z_values_dropdown=None, draw_legend=True, include_lone_images=True,
            include_sub_grids=False, no_fixed_seeds=False, vary_seeds_x=False, vary_seeds_y=False,
            vary_seeds_z=False, margin_size=0, csv_mode=False):
        ctx = xyz.context_for(current_app().engine)
        options = xyz.axis_options(p.is_img2img)
        opts = [xyz.find_option(options, t) for t in (x_type, y_type, z_type)]
        if not no_fixed_seeds:
            xyz.fix_seed(p)
        texts = [x_values or "", y_values or "", z_values or ""]
        dropdowns = [x_values_dropdown, y_values_dropdown, z_values_dropdown]
        axes = [xyz.parse_axis(o, t, ctx, p, d, bool(csv_mode)) for o, t, d in zip(opts, texts, dropdowns)]
        counts = (len(axes[0]), len(axes[1]), len(axes[2]))
        if xyz.cell_count(counts) * p.n_iter > xyz.MAX_CELLS:
            raise xyz.AxisError(f"the plot would make {xyz.cell_count(counts) * p.n_iter} images; "
                                f"the limit is {xyz.MAX_CELLS}")
        shown = [self._shown_values(o, t, d, bool(csv_mode)) for o, t, d in zip(opts, texts, dropdowns)]
        axis_params = xyz.axis_infotext(opts[0], shown[0], opts[1], shown[1], opts[2], shown[2])
        vary = (bool(vary_seeds_x), bool(vary_seeds_y), bool(vary_seeds_z))
        cells, grid_infotexts = self._run_cells(p, opts, axes, counts, vary, axis_params)
        labels = [[o.format(o, v) for v in values] for o, values in zip(opts, axes)]
        return self._processed(p, cells, grid_infotexts, labels, counts, bool(draw_legend), int(margin_size or 0),
                               bool(include_lone_images), bool(include_sub_grids))

    @staticmethod
    def _shown_values(opt: xyz.AxisOption, text: str, dropdown, csv_mode: bool) -> str:
        if opt.choices is not None and not csv_mode and dropdown:
            return ", ".join(map(str, dropdown))
        return text

    @staticmethod
    def _run_cells(p, opts, axes, counts, vary, axis_params) -> tuple[dict, dict]:
        cells: dict[tuple[int, int, int], Processed] = {}
        grid_infotexts: dict[int, str] = {}
        costs = (opts[0].cost, opts[1].cost, opts[2].cost)
        order = xyz.cell_order(counts, costs)
        for n, index in enumerate(order):
            if p.runtime is not None and p.runtime.interrupted:
                break
            pc = p.copy()
            for opt, values, i in zip(opts, axes, index):
                opt.apply(pc, values[i], values)
            if isinstance(pc.seed, int) and pc.seed != -1:
                pc.seed = xyz.varied_seed(pc.seed, index, counts, vary)
            first_of_grid = index[0] == 0 and index[1] == 0
            if first_of_grid:   # A1111 writes the plot's description into the first cell of each grid
                pc.extra_generation_params.update(axis_params)
            with job_part(p, n, len(order)):
                processed = process_images(pc)
            cells[index] = processed
            if first_of_grid and processed.infotexts:
                grid_infotexts[index[2]] = processed.infotexts[0]
        return cells, grid_infotexts

    @staticmethod
    def _processed(p, cells, grid_infotexts, labels, counts, draw_legend, margin, include_lone_images,
                   include_sub_grids) -> Processed:
        if not cells:
            out = Processed(p, [], info="")
            out.interrupted = True
            return out
        first = {index: proc.images[0] if proc.images else None for index, proc in cells.items()}
        drawn = xyz.draw_xyz(first, labels[0], labels[1], labels[2], draw_legend=draw_legend, margin=margin)
        fallback = next(iter(grid_infotexts.values()), "")
        images: list[Any] = [drawn.grid]
        infotexts = [grid_infotexts.get(0, fallback)]
        if include_sub_grids and counts[2] > 1:
            images += drawn.sub_grids
            infotexts += [grid_infotexts.get(iz, fallback) for iz in range(counts[2])]
        lead = len(images)
        lists: dict[str, list] = {"all_prompts": [], "all_negative_prompts": [], "all_seeds": [], "all_subseeds": []}
        if include_lone_images:
            for iz in range(counts[2]):
                for iy in range(counts[1]):
                    for ix in range(counts[0]):
                        proc = cells.get((ix, iy, iz))
                        if proc is None:
                            continue
                        images += proc.images
                        infotexts += proc.infotexts
                        for name, values in lists.items():
                            values += getattr(proc, name)
        some = next(iter(cells.values()))
        out = Processed(p, images, seed=p.seed, info=infotexts[0], index_of_first_image=lead, infotexts=infotexts,
                        extra=some.extra, **lists)
        out.interrupted = len(cells) < xyz.cell_count(counts) or any(proc.interrupted for proc in cells.values())
        return out
