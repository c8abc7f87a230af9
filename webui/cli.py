"""Command line: `python launch.py` serves the app; `launch.py txt2img|img2img …` generates headlessly."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

DEFAULT_PORT, DEFAULT_API_PORT = 7860, 7861


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("folders and models")
    g.add_argument("--data-dir", type=Path, help="root of models/, outputs/, extensions/ and config.json (default: the repo)")
    g.add_argument("--ckpt-dir", type=Path, help="checkpoint folder (default: DATA/models/Stable-diffusion)")
    g.add_argument("--vae-dir", type=Path, help="VAE folder (default: DATA/models/VAE)")
    g.add_argument("--lora-dir", type=Path, help="LoRA folder (default: DATA/models/Lora)")
    g.add_argument("--embeddings-dir", type=Path, help="textual-inversion folder (default: DATA/models/embeddings)")
    g.add_argument("--ckpt", type=str, help="checkpoint to load at start (a path or a name from the checkpoint folder)")
    g.add_argument("--ckpt-cache", type=int, help="how many loaded checkpoints to keep in RAM (default: the setting, 1)")
    g.add_argument("--vae", type=str, help="VAE: Automatic (default), None, or a file name from the VAE folder")
    g.add_argument("--device", type=str, help="torch device (default: cuda, then mps, then cpu)")
    g.add_argument("--no-half", action="store_true", help="keep the UNet and text encoders in fp32 on GPU")
    g.add_argument("--no-half-vae", action="store_true", help="keep the VAE in fp32 on GPU")
    g.add_argument("--log-level", default="INFO")
    _add_performance(p)


def _add_performance(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("performance")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="UNet/VAE compute precision (default: the setting, auto): auto is bf16 on CPUs with "
                        "AMX/AVX512-BF16, fp32 on other CPUs, fp16 on GPU")
    g.add_argument("--medvram", action="store_true",
                   help="keep text encoders, UNet and VAE in RAM; move each to the GPU only while it runs")
    g.add_argument("--lowvram", action="store_true", help="like --medvram, and the UNet block by block")
    g.add_argument("--channels-last", action="store_true", help="UNet weights in channels_last memory format")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (slow first step; falls back to eager with a warning)")
    g.add_argument("--vae-tiling", choices=("auto", "always", "never"),
                   help="tiled VAE encode/decode (default: the setting, auto = above --vae-tiled-threshold)")
    g.add_argument("--vae-tiled-threshold", type=int, metavar="PIXELS",
                   help="auto VAE tiling for images above this many pixels (default: the setting, 2048×2048)")


def memory_mode(args: argparse.Namespace) -> str:
    return "lowvram" if getattr(args, "lowvram", False) else "medvram" if getattr(args, "medvram", False) else "normal"


def vae_tiling(args: argparse.Namespace):
    from .engine.vae_tiling import DEFAULT_THRESHOLD, VaeTiling

    return VaeTiling(mode=getattr(args, "vae_tiling", None) or "auto",
                     threshold=getattr(args, "vae_tiled_threshold", None) or DEFAULT_THRESHOLD)


def _add_generation(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--prompt", default="")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--cfg-scale", type=float, default=7.0)
    g.add_argument("--sampler", default="Euler a", help="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M', 'DPM++ 2M Karras'")
    g.add_argument("--scheduler", default="Automatic", help="schedule type, e.g. Automatic, Karras, Exponential")
    g.add_argument("--width", type=int, help="multiple of 8 (default: the model's natural size)")
    g.add_argument("--height", type=int, help="multiple of 8 (default: the model's natural size)")
    g.add_argument("--seed", type=int, default=-1, help="-1 for random")
    g.add_argument("--subseed", type=int, default=-1, help="variation seed")
    g.add_argument("--subseed-strength", type=float, default=0.0, help="variation strength 0..1")
    g.add_argument("--seed-resize-from-w", type=int, default=0)
    g.add_argument("--seed-resize-from-h", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--batch-count", type=int, default=1)
    g.add_argument("--clip-skip", type=int, default=1)
    g.add_argument("--output", type=Path, help="write OUT.png (then OUT-1.png, …); default: outputs/<kind>-images/DATE/")


def _add_security(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security", "see docs/security.md")
    g.add_argument("--gradio-auth", metavar="USER:PASS[,USER2:PASS2]",
                   help="require a login for everything (UI, files, queue, API); the first user is the admin")
    g.add_argument("--gradio-auth-path", metavar="FILE", help="like --gradio-auth, read from a file (entries per line)")
    g.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]",
                   help="HTTP Basic on every /sdapi/* and /internal/* route; the first user is the admin")
    g.add_argument("--cors-allow-origins", metavar="ORIGIN[,ORIGIN]", help="origins allowed cross-origin access")
    g.add_argument("--cors-allow-origins-regex", metavar="REGEX", help="origins (full match) allowed cross-origin access")
    g.add_argument("--allowed-hosts", metavar="HOST[,HOST]",
                   help="more Host names this server answers to (localhost and the bind address always work; "
                        "'.example.lan' allows its subdomains)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Stable Diffusion studio: web UI, API and headless generation.")
    _add_common(parser)
    s = parser.add_argument_group("server")
    s.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}; {DEFAULT_API_PORT} with --nowebui)")
    s.add_argument("--listen", action="store_true", help="bind 0.0.0.0 instead of 127.0.0.1")
    s.add_argument("--server-name", type=str, help="bind this address")
    s.add_argument("--api", action="store_true", help="also serve the A1111-compatible /sdapi/v1 API")
    s.add_argument("--nowebui", action="store_true", help="serve the API only")
    s.add_argument("--enable-insecure-extension-access", action="store_true",
                   help="allow installing and updating extensions even when the server listens beyond localhost")
    _add_security(parser)
    sub = parser.add_subparsers(dest="command", metavar="{txt2img,img2img}")
    t2i = sub.add_parser("txt2img", help="generate from a prompt and exit")
    _add_common(t2i)
    _add_generation(t2i)
    i2i = sub.add_parser("img2img", help="generate from an init image and a prompt and exit")
    _add_common(i2i)
    _add_generation(i2i)
    i2i.add_argument("--init-image", type=Path, required=True)
    i2i.add_argument("--denoising-strength", type=float, default=0.75)
    i2i.add_argument("--resize-mode", default="0", help="0/'Just resize', 1/'Crop and resize', 2/'Resize and fill'")
    return parser


def make_engine(args: argparse.Namespace, prediction_overrides: dict[str, str] | None = None,
                require_model: bool = True):
    """The engine with the startup checkpoint loaded. Without `require_model`, a missing or broken
    startup checkpoint is logged and the engine starts empty (the server then says how to add one)."""
    from .engine.engine import Engine
    from .engine.errors import EngineError
    from .engine.paths import DataPaths
    from .startup import default_checkpoint

    paths = DataPaths.create(args.data_dir, args.ckpt_dir, args.vae_dir, args.lora_dir, args.embeddings_dir)
    extra = [Path(args.ckpt)] if args.ckpt and Path(args.ckpt).exists() else []
    engine = Engine(paths, device=args.device, ckpt_cache=args.ckpt_cache or 1, no_half=args.no_half,
                    no_half_vae=args.no_half_vae, prediction_overrides=prediction_overrides, extra_checkpoints=extra,
                    precision=getattr(args, "precision", None) or "auto", memory_mode=memory_mode(args),
                    channels_last=getattr(args, "channels_last", False), compile=getattr(args, "compile", False),
                    vae_tiling=vae_tiling(args))
    from .engine.precision import describe
    logging.getLogger(__name__).info("precision %s; memory mode %s", describe(engine.devices),
                                     engine.devices.memory_mode)
    engine.models.set_vae(args.vae or "Automatic")
    try:
        engine.load_checkpoint(args.ckpt or default_checkpoint(engine))
    except EngineError as exc:
        if require_model:
            raise
        logging.getLogger(__name__).error("starting without a model: %s", exc)
    return engine


def _params(args: argparse.Namespace, engine, img2img: bool):
    from .engine.params import GenerationParams, resize_mode_index

    natural = engine.models.natural_size(engine.require_model())
    p = GenerationParams(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, sampler_name=args.sampler,
        scheduler=args.scheduler, cfg_scale=args.cfg_scale, width=args.width or natural[0],
        height=args.height or natural[1], seed=args.seed, subseed=args.subseed, subseed_strength=args.subseed_strength,
        seed_resize_from_w=args.seed_resize_from_w, seed_resize_from_h=args.seed_resize_from_h,
        batch_size=args.batch_size, n_iter=args.batch_count, clip_skip=args.clip_skip)
    if img2img:
        p.init_images = [_open_image(args.init_image)]
        p.denoising_strength = args.denoising_strength
        p.resize_mode = resize_mode_index(args.resize_mode)
    return p


def _open_image(path: Path) -> Image.Image:
    from .engine.errors import InvalidParameterError
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidParameterError("init_image", f"cannot read {path}: {exc}") from None


def output_paths(output: Path, n: int) -> list[Path]:
    """OUT.png, OUT-1.png, OUT-2.png, …"""
    return [output if i == 0 else output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(n)]


def run_generation(args: argparse.Namespace) -> int:
    from .atomic_files import atomic_output
    from .engine.infotext import save_image_with_infotext
    from .services.storage import OutputStorage

    engine = make_engine(args)
    img2img = args.command == "img2img"
    params = _params(args, engine, img2img)
    result = engine.img2img(params) if img2img else engine.txt2img(params)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        paths = output_paths(args.output, len(result.images))
        for image, text, path in zip(result.images, result.infotexts, paths):
            with atomic_output(path) as tmp:
                save_image_with_infotext(image, tmp, text)
    else:
        storage = OutputStorage(engine.paths.outputs_dir)
        paths = [storage.save(im, args.command, seed, text)
                 for im, text, seed in zip(result.images, result.infotexts, result.seeds)]
    for path, text in zip(paths, result.infotexts):
        print(f"{path}\n{text}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .engine.errors import EngineError

    from .extensions.preload import add_extension_flags

    parser = build_parser()
    add_extension_flags(parser, sys.argv[1:] if argv is None else argv)   # extensions' preload.py flags
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command in ("txt2img", "img2img"):
            return run_generation(args)
        from .server import serve
        return serve(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
