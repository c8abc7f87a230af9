"""Which checkpoint and VAE are loaded: discovery, an LRU cache of loaded models, and VAE swaps.

Switching back to a cached checkpoint reuses its modules (the file is not read again). Changing the VAE
replaces only the VAE module; the UNet and text encoders are untouched.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from . import memory_modes, model_loader, prediction
from .conditioning import PromptEncoder, TextEncoder, load_tokenizer
from .detect import VAE_PREFIX, Family, UnknownArchitecture, detect_family
from .devices import DeviceConfig, free_memory
from .errors import CheckpointError
from .hashing import HashCache, short_hash
from .heap import trim_heap
from .model_files import ModelFile, find_auto_vae, find_by_name, list_checkpoints, list_vaes
from .paths import DataPaths
from .safe_load import load_state_dict, safetensors_metadata
from .sampling.discrete import DiscreteSchedule

log = logging.getLogger(__name__)
VAE_AUTOMATIC, VAE_NONE = "Automatic", "None"
PICKLE_MARK = "[pickle]"   # shown after pickle checkpoints: loaded tensors-only, but worth converting
FAMILY_SIZES = {"sd1": 512, "sd2": 512, "sdxl": 1024}


def _metadata_size(file: ModelFile) -> tuple[int, int] | None:
    """`modelspec.resolution` ("WxH") from the safetensors metadata, if the file declares one."""
    if file.path.suffix.lower() != ".safetensors":
        return None
    value = safetensors_metadata(file.path).get("modelspec.resolution", "")
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 and w % 8 == 0 and h % 8 == 0 else None


@dataclass
class SDModel:
    file: ModelFile
    family: Family
    prediction_type: str
    prediction_reason: str
    unet: UNet2DConditionModel
    own_vae: AutoencoderKL | None
    prompt_encoder: PromptEncoder
    schedule: DiscreteSchedule
    vae: AutoencoderKL | None = None
    vae_file: ModelFile | None = None
    sha256: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    def modules(self) -> list[torch.nn.Module]:
        mods = [self.unet] + [e.model for e in self.prompt_encoder.encoders]
        return mods + [m for m in (self.own_vae, self.vae) if m is not None]


class ModelManager:
    def __init__(self, paths: DataPaths, devices: DeviceConfig, hashes: HashCache, cache_size: int = 1,
                 prediction_overrides: dict[str, str] | None = None, extra_checkpoints: list[Path] = ()):
        self.paths = paths
        self.devices = devices
        self.hashes = hashes
        self.cache_size = max(1, int(cache_size))
        self.prediction_overrides = prediction_overrides if prediction_overrides is not None else {}
        self.extra_checkpoints = [Path(p) for p in extra_checkpoints]
        self.vae_choice = VAE_AUTOMATIC
        self._loaded: OrderedDict[str, SDModel] = OrderedDict()
        self._vae_cache: dict[str, AutoencoderKL] = {}
        self._tokenizers: dict[bool, object] = {}
        self._lock = threading.RLock()
        self.offloader = memory_modes.Offloader(devices.device, devices.offload_device)
        self.current: SDModel | None = None
        self._checkpoints: list[ModelFile] = []
        self._vaes: list[ModelFile] = []
        self.refresh()

    # ---- discovery -------------------------------------------------------------------------------
    def refresh(self) -> None:
        self._checkpoints = list_checkpoints([self.paths.ckpt_dir], self.extra_checkpoints)
        self._vaes = list_vaes(self.paths.vae_dir, [self.paths.ckpt_dir])

    def checkpoints(self) -> list[ModelFile]:
        return list(self._checkpoints)

    def vaes(self) -> list[ModelFile]:
        return list(self._vaes)

    def title(self, file: ModelFile) -> str:
        """A1111's 'name [shorthash]' once the hash is known, else the bare name; pickles end in ' [pickle]'."""
        sha = self.hashes.lookup("sha256", file.path) if not file.is_diffusers_folder else None
        title = f"{file.name} [{short_hash(sha)}]" if sha else file.name
        return f"{title} {PICKLE_MARK}" if file.is_pickle else title

    def resolve(self, query: str | Path) -> ModelFile:
        path = Path(query)
        if path.exists() and (path.is_dir() or path.is_file()):
            return find_by_name(self._checkpoints, str(path)) or ModelFile(path, path.name)
        found = find_by_name(self._checkpoints, str(query))
        if found is None:
            names = ", ".join(m.name for m in self._checkpoints) or "(none found in %s)" % self.paths.ckpt_dir
            raise CheckpointError(Path(str(query)), f"no such checkpoint. Available: {names}")
        return found

    def resolve_or_none(self, query: str | Path) -> ModelFile | None:
        try:
            return self.resolve(query)
        except CheckpointError:
            return None

    # ---- loading ---------------------------------------------------------------------------------
    def load(self, query: str | Path) -> SDModel:
        file = self.resolve(query)
        key = self._cache_key(file)
        with self._lock:
            model = self._loaded.get(key)
            fresh = model is None
            if fresh:
                model = self._load_file(file)
                self._loaded[key] = model
            self._loaded.move_to_end(key)
            if self._evict() or fresh:
                self._release_memory()   # a cache hit freed nothing: no gc pass (~0.9 s with a model loaded)
            self._activate(model)
            return model

    def _cache_key(self, file: ModelFile) -> str:
        st = file.path.stat()
        return f"{file.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def _evict(self) -> bool:
        evicted = False
        while len(self._loaded) > self.cache_size:
            _, old = self._loaded.popitem(last=False)
            self.offloader.detach(old)
            if old is self.current:
                self.current = None
            del old
            evicted = True
        return evicted

    def _release_memory(self) -> None:
        free_memory(self.devices.device)
        trim_heap()

    def _activate(self, model: SDModel) -> None:
        vae = model.vae
        if self.current is not None and self.current is not model:
            self.offloader.detach(self.current)
            self._move(self.current, torch.device("cpu"))
        self._apply_vae_choice(model)
        if model is self.current and model.vae is vae:
            return   # selected again: already prepared and placed, so no hooks or weights to redo
        memory_modes.prepare(model, self.devices, self.offloader)   # precision, tiling, offload hooks
        self._move(model, self.devices.device)
        self.current = model

    def _move(self, model: SDModel, device: torch.device) -> None:
        if self.devices.device.type == "cpu":
            return
        if device == self.devices.device and self.devices.memory_mode != "normal":
            return   # the offloader brings each component in when it runs
        for module in model.modules():
            module.to(device)

    def unload(self) -> None:
        with self._lock:
            for model in self._loaded.values():
                self.offloader.detach(model)
            self._loaded.clear()
            self.current = None
            free_memory(self.devices.device)
            trim_heap()

    def _load_file(self, file: ModelFile) -> SDModel:
        log.info("loading checkpoint %s", file.path)
        if file.is_diffusers_folder:
            return self._load_diffusers_folder(file)
        sd = load_state_dict(file.path, dtype=self.devices.dtype)   # cast while reading: no second copy
        try:
            return self._build(file, sd)
        except UnknownArchitecture as exc:
            raise CheckpointError(file.path, f"not a Stable Diffusion checkpoint this app can load: {exc}") from None
        except (ValueError, KeyError, StopIteration, RuntimeError) as exc:
            raise CheckpointError(file.path, f"could not build the model from this file ({exc})") from None

    def _build(self, file: ModelFile, sd: dict[str, torch.Tensor]) -> SDModel:
        det = detect_family(sd)
        dtype = self.devices.dtype
        unet = model_loader.build_unet(sd, det.family, dtype)
        own_vae = model_loader.build_vae(sd, det.family, self.devices.vae_dtype) if det.has_vae else None
        encoders = model_loader.build_text_encoders(sd, det.family, dtype)
        pred, reason = prediction.decide(det.family, file.path, file.name, sd.keys(), self.prediction_overrides, unet)
        log.info("%s: %s, %s (%s)", file.name, det.family.label, pred, reason)
        return SDModel(file=file, family=det.family, prediction_type=pred, prediction_reason=reason, unet=unet,
                       own_vae=own_vae, prompt_encoder=self._prompt_encoder(encoders, det.family),
                       schedule=DiscreteSchedule.for_sd(), extra={"has_depth_model": det.has_depth_model})

    def _prompt_encoder(self, encoders: list[tuple[str, torch.nn.Module]], family: Family) -> PromptEncoder:
        wrapped = []
        for kind, module in encoders:
            pad_zero = kind.startswith("open_clip")
            if pad_zero not in self._tokenizers:
                self._tokenizers[pad_zero] = load_tokenizer(pad_zero)
            wrapped.append(TextEncoder(kind, module, self._tokenizers[pad_zero], family.base))
        return PromptEncoder(wrapped)

    def _load_diffusers_folder(self, file: ModelFile) -> SDModel:
        folder, dtype = file.path, self.devices.dtype
        try:
            unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype, local_files_only=True)
            vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=self.devices.vae_dtype, local_files_only=True)
            encoders, family = self._diffusers_text_encoders(folder, unet, dtype)
        except (OSError, ValueError) as exc:
            raise CheckpointError(folder, f"could not load diffusers folder ({exc})") from None
        sched_cfg = folder / "scheduler" / "scheduler_config.json"
        pred = json.loads(sched_cfg.read_text()).get("prediction_type", "epsilon") if sched_cfg.is_file() else "epsilon"
        pred, reason = (prediction.from_sidecar(folder) or pred), "diffusers scheduler config"
        pred = self.prediction_overrides.get(file.name, pred)
        for _, module in encoders:
            module.eval().requires_grad_(False)
        return SDModel(file=file, family=family, prediction_type=pred, prediction_reason=reason,
                       unet=unet.eval().requires_grad_(False), own_vae=vae.eval().requires_grad_(False),
                       prompt_encoder=self._prompt_encoder(encoders, family), schedule=DiscreteSchedule.for_sd())

    @staticmethod
    def _diffusers_text_encoders(folder: Path, unet, dtype) -> tuple[list, Family]:
        has_te1, has_te2 = (folder / "text_encoder").is_dir(), (folder / "text_encoder_2").is_dir()
        in_ch = unet.config.in_channels
        if has_te2:
            te2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", torch_dtype=dtype, local_files_only=True)
            if not has_te1:
                return [("open_clip_g", te2)], Family.SDXL_REFINER
            te1 = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype, local_files_only=True)
            return [("clip_l", te1), ("open_clip_g", te2)], Family.SDXL_INPAINT if in_ch == 9 else Family.SDXL
        te = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype, local_files_only=True)
        if te.config.hidden_act == "gelu":   # OpenCLIP-H: SD2 (diffusers already dropped the last layer)
            family = {9: Family.SD2_INPAINT, 5: Family.SD2_DEPTH}.get(in_ch, Family.SD2)
            return [("open_clip", te)], family
        return [("clip_l", te)], Family.SD1_INPAINT if in_ch == 9 else Family.SD1

    # ---- VAE -------------------------------------------------------------------------------------
    def set_vae(self, choice: str) -> None:
        """'Automatic', 'None' or a VAE name; swaps only the VAE module of the current model."""
        if choice not in (VAE_AUTOMATIC, VAE_NONE) and find_by_name(self._vaes, choice) is None:
            names = ", ".join([VAE_AUTOMATIC, VAE_NONE] + [v.name for v in self._vaes])
            raise CheckpointError(Path(choice), f"no such VAE. Available: {names}")
        with self._lock:
            self.vae_choice = choice
            if self.current is not None:
                self._apply_vae_choice(self.current)
                memory_modes.prepare(self.current, self.devices, self.offloader)
                self._move(self.current, self.devices.device)

    def _apply_vae_choice(self, model: SDModel) -> None:
        if self.vae_choice == VAE_NONE:
            vae_file = None
        elif self.vae_choice == VAE_AUTOMATIC:
            vae_file = find_auto_vae(model.file, self._vaes)
        else:
            vae_file = find_by_name(self._vaes, self.vae_choice)
        if vae_file is None:
            if model.own_vae is None:
                raise CheckpointError(model.file.path, "the checkpoint has no VAE of its own; choose a VAE file")
            model.vae, model.vae_file = model.own_vae, None
            return
        model.vae, model.vae_file = self._load_vae(vae_file, model.family), vae_file

    def _load_vae(self, file: ModelFile, family: Family) -> AutoencoderKL:
        key = f"{file.path.resolve()}|{family.base}"
        if key not in self._vae_cache:
            sd = load_state_dict(file.path)
            prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in sd) else ""
            try:
                self._vae_cache[key] = model_loader.build_vae(sd, family, self.devices.vae_dtype, prefix=prefix)
            except (ValueError, KeyError) as exc:
                raise CheckpointError(file.path, f"not a usable VAE ({exc})") from None
        return self._vae_cache[key]

    def model_hash(self, model: SDModel) -> str | None:
        if model.file.is_diffusers_folder:
            return None
        if model.sha256 is None:
            model.sha256 = self.hashes.sha256(model.file.path)
        return model.sha256

    def natural_size(self, model: SDModel) -> tuple[int, int]:
        """The size a model was trained at: declared in its metadata, else its family's (768 for SD2-v)."""
        declared = _metadata_size(model.file)
        if declared:
            return declared
        side = 768 if model.family.base == "sd2" and model.prediction_type == "v_prediction" else FAMILY_SIZES[model.family.base]
        return side, side

    def vae_hash(self, model: SDModel) -> str | None:
        return self.hashes.sha256(model.vae_file.path) if model.vae_file is not None else None
