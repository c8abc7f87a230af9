"""The built-in scripts' pure logic: X/Y/Z value syntax, prompt matrix combinations, prompts-from-file lines."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from webui.scripts_logic import prompt_matrix, prompts_file, xyz


def opt(label: str) -> xyz.AxisOption:
    return xyz.find_option(xyz.AXIS_OPTIONS, label)


CTX = xyz.AxisContext(
    samplers={"euler a": "Euler a", "k_euler_a": "Euler a", "euler": "Euler", "dpm++ 2m": "DPM++ 2M"},
    schedules={"karras": "Karras", "automatic": "Automatic"},
    resolve_checkpoint=lambda q: xyz.closest_checkpoint(q, ["sd1.safetensors", "sub/sd2.safetensors"]),
)


# ---- X/Y/Z values --------------------------------------------------------------------------------

def test_csv_values_quote_and_strip():
    assert xyz.csv_values('cat, "dog, big",  bird ') == ["cat", "dog, big", "bird"]
    assert xyz.csv_values("") == []


@pytest.mark.parametrize("text, expected", [
    ("1, 2, 3", [1, 2, 3]),
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-10 (+3)", [1, 4, 7, 10]),
    ("10-1 (-4)", [10, 6, 2]),
    ("1-10 [5]", [1, 3, 5, 7, 10]),
    ("5, 1-3, 20", [5, 1, 2, 3, 20]),
    (" 8 ,  , 9", [8, 9]),
])
def test_int_axis_values(text, expected):
    assert xyz.parse_axis(opt("Steps"), text) == expected


@pytest.mark.parametrize("text, expected", [
    ("7, 7.5", [7.0, 7.5]),
    ("1-2 (+0.25)", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("5-7 [3]", [5.0, 6.0, 7.0]),
    ("0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
])
def test_float_axis_values(text, expected):
    values = xyz.parse_axis(opt("CFG Scale"), text)
    assert values == pytest.approx(expected)
    assert all(isinstance(v, float) for v in values)


def test_bad_number_names_the_axis():
    with pytest.raises(xyz.AxisError, match="Steps"):
        xyz.parse_axis(opt("Steps"), "4, lots")
    with pytest.raises(xyz.AxisError, match="no values"):
        xyz.parse_axis(opt("Steps"), " , ")


def test_seed_minus_one_becomes_random_once():
    values = xyz.parse_axis(opt("Seed"), "-1, 5, -1")
    assert values[1] == 5
    assert all(0 <= v < 2**32 for v in values) and values[0] != -1 and values[2] != -1
    assert values[0] != values[2]


def test_sampler_names_are_validated_and_normalised():
    assert xyz.parse_axis(opt("Sampler"), "euler a, k_euler_a, DPM++ 2M", CTX) == ["Euler a", "Euler a", "DPM++ 2M"]
    with pytest.raises(xyz.AxisError, match="Unknown sampler: Nope"):
        xyz.parse_axis(opt("Sampler"), "Euler, Nope", CTX)


def test_sampler_dropdown_values_win_unless_csv_mode():
    assert xyz.parse_axis(opt("Sampler"), "", CTX, dropdown=["Euler"]) == ["Euler"]
    assert xyz.parse_axis(opt("Sampler"), "Euler a", CTX, dropdown=["Euler"], csv_mode=True) == ["Euler a"]


def test_checkpoint_names_resolve_like_a1111():
    values = xyz.parse_axis(opt("Checkpoint name"), "sd1, sd2.safetensors, sd1.safetensors [abc123]", CTX)
    assert values == ["sd1.safetensors", "sub/sd2.safetensors", "sd1.safetensors"]
    with pytest.raises(xyz.AxisError, match="Unknown checkpoint: sdxl"):
        xyz.parse_axis(opt("Checkpoint name"), "sdxl", CTX)
    assert xyz.closest_checkpoint("sd", ["sd1.safetensors", "sub/sd2.safetensors"]) == "sd1.safetensors"


def test_schedule_type_values():
    assert xyz.parse_axis(opt("Schedule type"), "karras, Automatic", CTX) == ["Karras", "Automatic"]
    with pytest.raises(xyz.AxisError):
        xyz.parse_axis(opt("Schedule type"), "bogus", CTX)


def test_prompt_sr_replaces_first_value():
    p = SimpleNamespace(prompt="a red cat", negative_prompt="no red")
    values = xyz.parse_axis(opt("Prompt S/R"), 'red, blue, "green, bright"', CTX, p=p)
    assert values == ["red", "blue", "green, bright"]
    for value, want in zip(values, ["a red cat", "a blue cat", "a green, bright cat"]):
        q = SimpleNamespace(prompt=p.prompt, negative_prompt=p.negative_prompt)
        opt("Prompt S/R").apply(q, value, values)
        assert q.prompt == want
    with pytest.raises(xyz.AxisError, match="did not find"):
        xyz.parse_axis(opt("Prompt S/R"), "purple, blue", CTX, p=p)


def test_prompt_order_permutes_tokens():
    values = xyz.parse_axis(opt("Prompt order"), "cat, dog")
    assert values == [["cat", "dog"], ["dog", "cat"]]
    p = SimpleNamespace(prompt="a cat and a dog, sunny")
    opt("Prompt order").apply(p, ["dog", "cat"], values)
    assert p.prompt == "a dog and a cat, sunny"


def test_checkpoint_apply_uses_override_settings():
    p = SimpleNamespace()
    opt("Checkpoint name").apply(p, "sd1.safetensors", [])
    assert p.override_settings == {"sd_model_checkpoint": "sd1.safetensors"}


def test_labels_follow_a1111_formats():
    assert opt("Steps").format(opt("Steps"), 20) == "Steps: 20"
    assert opt("CFG Scale").format(opt("CFG Scale"), 7.5) == "CFG Scale: 7.5"
    assert opt("Sampler").format(opt("Sampler"), "Euler a") == "Euler a"
    assert opt("Checkpoint name").format(opt("Checkpoint name"), "sub/sd2.safetensors") == "sd2.safetensors"
    assert opt("Nothing").format(opt("Nothing"), None) == ""
    assert xyz.parse_axis(opt("Nothing"), "whatever") == [None]


def test_find_option_by_index_or_label():
    assert xyz.find_option(xyz.AXIS_OPTIONS, 1).label == "Seed"
    assert xyz.find_option(xyz.AXIS_OPTIONS, "4").label == "Steps"
    assert xyz.find_option(xyz.AXIS_OPTIONS, "cfg scale").label == "CFG Scale"
    assert xyz.find_option(xyz.AXIS_OPTIONS, None).label == "Nothing"
    with pytest.raises(xyz.AxisError):
        xyz.find_option(xyz.AXIS_OPTIONS, 99)
    with pytest.raises(xyz.AxisError):
        xyz.find_option(xyz.AXIS_OPTIONS, "Bogus")


def test_cell_order_puts_costly_axis_outermost():
    plain = xyz.cell_order((2, 2, 1), (0.0, 0.0, 0.0))
    assert plain == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    costly_x = xyz.cell_order((2, 3, 1), (1.0, 0.0, 0.0))
    assert [c[0] for c in costly_x] == [0, 0, 0, 1, 1, 1]   # the checkpoint switches once
    assert sorted(costly_x) == sorted(plain + [(0, 2, 0), (1, 2, 0)])


def test_varied_seed():
    assert xyz.varied_seed(100, (1, 2, 0), (3, 4, 2), (False, False, False)) == 100
    assert xyz.varied_seed(100, (1, 2, 1), (3, 4, 2), (True, True, True)) == 100 + 1 + 2 * 3 + 1 * 12
    assert xyz.varied_seed(100, (1, 2, 1), (3, 4, 2), (False, True, False)) == 102


def test_axis_infotext():
    info = xyz.axis_infotext(opt("Seed"), "1, 2", opt("Steps"), "4-6", opt("Nothing"), "")
    assert info == {"Script": "X/Y/Z plot", "X Type": "Seed", "X Values": "1, 2", "Y Type": "Steps",
                    "Y Values": "4-6"}


def test_draw_xyz_shapes():
    cells = {(ix, iy, iz): Image.new("RGB", (32, 32), (40 * ix, 40 * iy, 40 * iz))
             for ix in range(3) for iy in range(2) for iz in range(2)}
    out = xyz.draw_xyz(cells, ["a", "b", "c"], ["r1", "r2"], ["z1", "z2"], margin=0)
    assert len(out.sub_grids) == 2
    sub = out.sub_grids[0]
    assert sub.width > 3 * 32 and sub.height > 2 * 32
    assert out.grid.width == 2 * sub.width and out.grid.height > sub.height
    bare = xyz.draw_xyz(cells, ["a", "b", "c"], ["r1", "r2"], ["z1", "z2"], draw_legend=False)
    assert bare.sub_grids[0].size == (96, 64)
    assert bare.grid.size == (192, 64)


# ---- prompt matrix -------------------------------------------------------------------------------

def test_prompt_matrix_combinations():
    prompts = prompt_matrix.combinations("a cat|red|big, |blurry")
    assert len(prompts) == 8
    assert prompts == ["a cat", "a cat, red", "a cat, big", "a cat, red, big", "a cat, blurry",
                       "a cat, red, blurry", "a cat, big, blurry", "a cat, red, big, blurry"]


def test_prompt_matrix_at_start_and_space():
    prompts = prompt_matrix.combinations("base|x|y", put_at_start=True, delimiter="space")
    assert prompts == ["base", "x base", "y base", "x y base"]
    with pytest.raises(ValueError):
        prompt_matrix.combinations("a|b", delimiter="tab")
    assert prompt_matrix.combinations("no parts") == ["no parts"]


def test_prompt_matrix_grid_shape_and_headers():
    assert prompt_matrix.grid_shape("a|b|c|d") == (2, 4)
    assert prompt_matrix.grid_shape("a|b|c") == (2, 2)
    assert prompt_matrix.grid_shape("a|b") == (1, 2)
    cols, rows = prompt_matrix.headers("a|b|c|d")
    assert len(cols) == 4 and len(rows) == 2
    assert [[label.active for label in col] for col in cols] == [[False, False], [True, False], [False, True],
                                                                  [True, True]]
    assert [label.text for label in rows[1]] == ["d"] and rows[1][0].active


def test_prompt_matrix_draw():
    images = [Image.new("RGB", (32, 32), (i * 30, 0, 0)) for i in range(8)]
    grid = prompt_matrix.draw_matrix(images, "a|b|c|d")
    assert grid.width > 4 * 32 and grid.height > 2 * 32
    with pytest.raises(ValueError):
        prompt_matrix.draw_matrix(images[:3], "a|b|c|d")


# ---- prompts from file ---------------------------------------------------------------------------

def test_plain_lines_and_blank_lines():
    jobs = prompts_file.parse_lines("a cat\n\n   a dog  \n")
    assert [j.options for j in jobs] == [{"prompt": "a cat"}, {"prompt": "a dog"}]


def test_option_lines():
    line = ('--prompt "a red cat" on a mat --negative_prompt "blurry, dark" --steps 10 --seed 5 '
            '--cfg_scale 6.5 --sampler_name "Euler a" --width 64 --height 96 --n_iter 2 --tiling true')
    job = prompts_file.parse_line(line)
    assert job.error is None
    assert job.options == {"prompt": "a red cat on a mat", "negative_prompt": "blurry, dark", "steps": 10,
                           "seed": 5, "cfg_scale": 6.5, "sampler_name": "Euler a", "width": 64, "height": 96,
                           "n_iter": 2, "tiling": True}


@pytest.mark.parametrize("line", ["--bogus 3", "--steps", "--steps many", 'oops -- "unclosed'])
def test_bad_option_lines_fall_back_to_prompt(line):
    job = prompts_file.parse_line(line)
    assert job.options == {"prompt": line} and job.error


def test_combine_prompt_positions():
    assert prompts_file.combine_prompt("style", "a cat", "start") == "a cat style"
    assert prompts_file.combine_prompt("style", "a cat", "end") == "style a cat"
    assert prompts_file.combine_prompt("", "a cat", "end") == "a cat"
    assert prompts_file.combine_prompt("style", None) == "style"


def test_job_count():
    jobs = prompts_file.parse_lines("a\n--prompt b --n_iter 3")
    assert prompts_file.job_count(jobs, 1) == 4


# ---- progress over several generations ------------------------------------------------------------

def test_job_part_rescales_progress():
    import torch

    from webui.engine.processing import StepInfo
    from webui.scripts_logic.progress import job_part

    seen = []
    runtime = SimpleNamespace(progress=lambda info: seen.append((info.step, info.total_steps)))
    p = SimpleNamespace(runtime=runtime)
    outer = runtime.progress
    for part in range(3):
        with job_part(p, part, 3):
            for step in (1, 4):
                p.runtime.progress(StepInfo(step, 4, 0, torch.zeros(1)))
    assert runtime.progress is outer
    assert seen == [(1, 12), (4, 12), (5, 12), (8, 12), (9, 12), (12, 12)]
    with job_part(SimpleNamespace(runtime=None), 0, 3):   # no runtime: nothing to do
        pass
