"""Settings persistence and validation, and settings that the running app applies at once."""
from __future__ import annotations

import json

import pytest

from webui.engine.errors import InvalidParameterError
from webui.services.settings import Settings


def test_update_validates_all_before_saving(tmp_path):
    path = tmp_path / "config.json"
    settings = Settings.load(path)
    settings.update({"queue_max_size": 5, "samples_format": "jpg"})
    assert json.loads(path.read_text()) == {"queue_max_size": 5, "samples_format": "jpg"}
    for bad in ({"queue_max_size": 0}, {"queue_max_size": "many"}, {"samples_format": "gif"},
                {"no_such_setting": 1}, {"samples_save": "yes"}):
        with pytest.raises(InvalidParameterError) as err:
            settings.update({"queue_max_size": 7, **bad})
        assert next(iter(bad)) in str(err.value)
    assert Settings.load(path).get("queue_max_size") == 5


def test_corrupt_config_is_backed_up_and_defaults_used(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    settings = Settings.load(path)
    assert settings.get("queue_max_size") == 32
    backups = list(tmp_path.glob("config.json.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == "{not json"


def test_running_app_applies_changes(checkpoints, tmp_path):
    from webui.app import App
    from webui.cli import build_parser

    ckpt = checkpoints.path("sd1")
    args = build_parser().parse_args(["--data-dir", str(checkpoints.data_dir), "--ckpt", str(ckpt)])
    app = App.create(args)
    try:
        app.settings.update({"queue_max_size": 3, "sd_checkpoints_limit": 4,
                             "outdir_txt2img_samples": str(tmp_path / "custom"),
                             "sd2_prediction_overrides": json.dumps({"x.safetensors": "v_prediction"})})
        assert app.queue.max_size == 3 and app.engine.models.cache_size == 4
        app.settings.update({"emphasis": "No norm", "pad_cond_uncond": True})
        assert app.engine.prompt_options.emphasis == "No norm" and app.engine.prompt_options.pad_conds
        assert app.engine.models.prediction_overrides == {"x.safetensors": "v_prediction"}
        assert app.storage.folder("txt2img").parent == tmp_path / "custom"
        app.settings.update({"outdir_txt2img_samples": ""})
        assert app.storage.folder("txt2img").parent == checkpoints.data_dir / "outputs" / "txt2img-images"
    finally:
        app.queue.shutdown()
