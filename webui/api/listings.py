"""The GET lists (samplers, schedulers, models, ...) and the options/cmd-flags/memory reads."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from ..engine.embeddings import describe as describe_embedding
from ..engine.model_files import ModelFile
from ..engine.postprocess import EXTRAS_UPSCALERS
from .context import ApiContext

A1111_DEFAULT_RHO = -1.0   # A1111's Scheduler.default_rho when a schedule has none


def samplers(api: ApiContext) -> list[dict[str, Any]]:
    out = []
    for info in api.app.engine.samplers:
        options = {k: str(v) for k, v in info.options.items()}
        if info.default_scheduler != "automatic":
            options["scheduler"] = info.default_scheduler
        out.append({"name": info.name, "aliases": list(info.aliases), "options": options})
    return out


def schedulers(api: ApiContext) -> list[dict[str, Any]]:
    return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) or None,
             "default_rho": s.default_rho if s.default_rho is not None else A1111_DEFAULT_RHO,
             "need_inner_model": s.needs_model_schedule}
            for s in api.app.engine.schedules]


def upscalers() -> list[dict[str, Any]]:
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None,
             "scale": None if name == "None" else 4} for name in EXTRAS_UPSCALERS]


def _model_name(file: ModelFile) -> str:
    return os.path.splitext(file.name.replace("/", "_").replace("\\", "_"))[0]


def sd_models(api: ApiContext) -> list[dict[str, Any]]:
    models = api.app.engine.models
    api.current_title()   # hashes the loaded model once, so its title and hash are filled in
    out = []
    for file in models.checkpoints():
        sha = None if file.is_diffusers_folder else models.hashes.lookup("sha256", file.path)
        out.append({"title": models.title(file), "model_name": _model_name(file), "hash": sha[:10] if sha else None,
                    "sha256": sha, "filename": file.filename, "config": None, "pickle": file.is_pickle})
    return out


def sd_vaes(api: ApiContext) -> list[dict[str, Any]]:
    return [{"model_name": v.name, "filename": v.filename} for v in api.app.engine.models.vaes()]


def loras(api: ApiContext, refresh: bool = False) -> list[dict[str, Any]]:
    """A1111's /sdapi/v1/loras: name, alias, path and the file's (ss_*) metadata."""
    engine = api.app.engine
    return [engine.networks.library.describe(f) for f in engine.list_loras(refresh=refresh)]


def refresh_loras(api: ApiContext) -> dict[str, Any]:
    api.app.engine.list_loras(refresh=True)
    return {}


def embeddings(api: ApiContext) -> dict[str, Any]:
    """A1111's /sdapi/v1/embeddings: those the loaded model can use, and those it cannot."""
    listing = api.app.engine.list_embeddings()
    return {"loaded": {name: describe_embedding(e) for name, e in listing.loaded.items()},
            "skipped": {name: describe_embedding(e) for name, e in listing.skipped.items()}}


def options(api: ApiContext) -> dict[str, Any]:
    values = api.app.settings.as_dict()
    title = api.current_title()
    current = api.app.engine.models.current
    if title is not None and current is not None:
        values["sd_model_checkpoint"] = title
        values["sd_checkpoint_hash"] = current.sha256
    values["sd_vae"] = api.app.engine.models.vae_choice
    return values


def cmd_flags(api: ApiContext) -> dict[str, Any]:
    args = api.app.args or argparse.Namespace()
    return {k: _plain(v) for k, v in vars(args).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def memory() -> dict[str, Any]:
    return {"ram": _ram(), "cuda": _cuda()}


def _ram() -> dict[str, Any]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        free = os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return {"error": "unavailable on this platform"}
    return {"free": free, "used": total - free, "total": total}


def _cuda() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    free, total = torch.cuda.mem_get_info()
    s = torch.cuda.memory_stats()
    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": {"current": s.get("active_bytes.all.current", 0), "peak": s.get("active_bytes.all.peak", 0)},
        "allocated": {"current": s.get("allocated_bytes.all.current", 0), "peak": s.get("allocated_bytes.all.peak", 0)},
        "reserved": {"current": s.get("reserved_bytes.all.current", 0), "peak": s.get("reserved_bytes.all.peak", 0)},
        "inactive": {"current": s.get("inactive_split_bytes.all.current", 0),
                     "peak": s.get("inactive_split_bytes.all.peak", 0)},
        "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)},
    }


def extensions(api: ApiContext) -> list[dict[str, Any]]:
    from ..extensions.manager import ExtensionManager

    manager = ExtensionManager.for_app(api.app)
    out = []
    for ext in manager.extensions():
        git = manager.git_info(ext)
        out.append({"name": ext.name, "remote": git.remote, "branch": git.branch, "commit_hash": git.commit,
                    "version": git.version, "commit_date": git.date, "enabled": ext.enabled})
    return out
