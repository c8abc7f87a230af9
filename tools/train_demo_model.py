"""Train the bundled demo model: a tiny latent diffusion model in the real Stable Diffusion 1 architecture.

Phases, all on CPU, reproducible from `--seed` (each phase reseeds):

1. VAE (diffusers `AutoencoderKL`) on random crops of rendered shapes, with L1 + image-gradient L1 (keeps edges
   sharp so small triangles stay triangles) and a tiny KL term; log-variance bias starts at -8.
   1b. Decoder-only refinement on full-size images (encoder frozen).
2. The training images are encoded once; the per-channel latent mean/std are folded exactly into
   `quant_conv` / `post_quant_conv` so that `latents * 0.18215` has zero mean and unit std (SD1's scaling factor).
   2b/2c. Two more decoder-only rounds (the second adds an L1 on 4x4 block colours). The encoder, hence the
   latents, stays frozen, so phase 3 does not depend on them.
3. UNet (`UNet2DConditionModel`, 8-head cross-attention) and CLIP text encoder (`CLIPTextModel`, 64-dim heads,
   quick_gelu, the project's real CLIP BPE tokenizer) trained jointly with epsilon prediction on SD's
   scaled-linear 1000-step schedule, 10% empty prompts (for CFG), offset noise (so flat backgrounds follow the
   prompt instead of the initial noise), min-SNR loss weighting and a caption curriculum (background and
   position always named during the first steps, attributes dropped at random later). Training-only attribute
   heads read every caption attribute from the text encoder's end-of-text/padding states, where the UNet's
   cross-attention looks; without them the shape and position words never reached the UNet. Constant learning
   rate and an EMA of the weights: the checkpoint of step N equals the result of `--unet-steps N`.
   3b. The finish: from phase 3's EMA weights, a fresh optimiser whose learning rate falls along a cosine to 0.
   3c/3d/3e. The anneals: from the EMA weights so far, 600 more steps each with a fresh optimiser whose rate
   falls to 0 from a lower start (3e-4, 1e-4, 1e-4); the last draws fresh batches. Shape rises with 3c and 3d,
   count with 3c, colour with 3e.

Intermediate weights are diffusers folders in `--work-dir`; the last step writes one fp16 single-file SD1
checkpoint with `webui.engine.checkpoint_writer`.

    HF_HUB_OFFLINE=1 nice -n 5 python tools/train_demo_model.py --work-dir /tmp/demo_train/run \\
        --out models/Stable-diffusion/demo-shapes-v1.safetensors
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))
from shapes_dataset import COLOURS, POSITIONS, SHAPES, SIZES, ShapesSampler, Scene, caption, eval_scenes  # noqa: E402

SCALE_FACTOR = 0.18215
TOKENIZER_DIR = ROOT / "webui" / "engine" / "tokenizers" / "clip"


@dataclass
class Config:
    seed: int = 1
    threads: int = 2  # every phase runs in this one process (OpenMP crawls when two processes share the cores)
    image_size: int = 64
    # VAE
    vae_channels: tuple[int, ...] = (64, 64, 64)  # >= 2 channels per GroupNorm group keeps flat colours
    vae_steps: int = 1000
    vae_batch: int = 8
    vae_crop: int = 48
    vae_lr: float = 2e-3
    vae_colour_weight: float = 0.0  # weight of colour_l1 in phase 1
    decoder_steps: int = 600  # phase 1b: decoder-only refinement on frozen-encoder latents
    decoder_lr: float = 1e-3
    polish_steps: int = 300  # phase 2b: decoder-only round in the normalised space (before phase 3)
    colour_steps: int = 500  # phase 2c: decoder round with the block-colour loss
    colour_lr: float = 3e-4
    # data
    train_images: int = 12000
    p_two: float = 0.25
    # text encoder
    text_hidden: int = 64
    text_layers: int = 3
    # CLIP's own init (0.02) leaves untrained word embeddings nearly equal, and the weak words (shape, position)
    # never separate: see docs/demo_model.md. 0.02 is the shipped recipe.
    token_init_std: float = 0.02
    # UNet
    unet_channels: tuple[int, ...] = (64, 96, 128)
    # per level, from the 16×16 one down: 1 = self- and cross-attention blocks (the middle block always has them).
    # Without them at 16×16 a step takes half the time; with the attribute heads below shape still reaches 0.81.
    unet_attention: tuple[int, ...] = (0, 1, 0)
    unet_layers_per_block: int = 1
    unet_steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 50
    ema_decay: float = 0.995  # constant LR + EMA: step N's weights do not depend on the planned total
    offset_noise: float = 0.3
    # Standard deviation of the latents the UNet sees (SD's `latents * 0.18215`). Below 1 the SD1 schedule's SNR
    # drops by its square at every step, so that x_t stops showing the layout at high noise. An experiment: at 0.25
    # position was still not learned and colour came slower (docs/demo_model.md); 1 is the shipped recipe.
    latent_std: float = 1.0
    # > 0: multi-resolution noise, so that the low frequencies of x_t stop telling the layout at high noise
    pyramid_noise_discount: float = 0.0
    min_snr_gamma: float = 5.0
    snr_floor: float = 0.0  # x0-space loss weight never below this (layout is decided at high noise)
    # Share of each batch drawn from t >= high_t_from with x0-space weight >= high_t_x0_weight, the steps where the
    # layout is decided. Alone it did not teach position: x_t still shows the layout there (docs/demo_model.md).
    high_t_share: float = 0.0
    high_t_from: int = 900
    high_t_x0_weight: float = 1.0
    # Share of each batch trained as the sampler's first step really is: t=999 on pure noise (no x0 in x_t), with
    # the epsilon target that denoises to x0. The SD1 schedule keeps x0 at 0.068 in x_t there.
    terminal_share: float = 0.0
    terminal_x0_weight: float = 1.0  # the terminal samples' loss weight in x0 space
    # Phase 3b, the finish (0 = off): this many steps from phase 3's EMA weights with a fresh optimiser, no
    # curriculum, the learning rate falling along a cosine to finish_lr_end (sharper colours and shapes than the
    # same steps at a constant rate) and terminal_share = finish_terminal_share (an experiment: a terminal share
    # makes the words move the object, docs/demo_model.md).
    finish_steps: int = 1000
    finish_terminal_share: float = 0.0
    finish_lr_end: float = 0.0
    # Phases 3c, 3d, 3e: the anneals, one per entry of anneal_lrs (none if anneal_steps = 0). Each runs
    # anneal_steps steps from the EMA weights so far with a fresh optimiser whose rate falls along a cosine from its
    # entry to 0, drawing its batches from seed + its entry of anneal_seed_offsets (0 replays phase 3's first
    # batches). Shape rose from 0.36-0.39 after 3b to 0.44 (3c) and 0.52 (3d); count rose in 3c to 0.84-0.86; the
    # third, on fresh batches, raised colour from 0.75-0.80 to 0.86-0.92 (docs/demo_model.md, "Shape").
    anneal_steps: int = 600
    anneal_lrs: tuple[float, ...] = (3e-4, 1e-4, 1e-4)
    anneal_seed_offsets: tuple[int, ...] = (0, 0, 1000)
    # An experiment in the anneals, off by default: extra loss weight on the latent pixels at and next to an object.
    # It bought ~0.04 colour at a cost in count, even when applied only below foreground_max_t (at high noise it
    # makes a missed object cost more than a spurious one, and the model hedges with extra objects).
    foreground_weight: float = 0.0
    foreground_max_t: int = 500
    # > 0: an auxiliary loss (this weight) that trains heads, discarded afterwards, to read every caption attribute
    # from the mean of the text encoder's end-of-text and padding states. The UNet's cross-attention looks mostly
    # there; without the heads those states carried the background and hardly the shape or position words, and
    # both stayed at chance (docs/demo_model.md, "Shape and position words were lost in the text encoder").
    text_aux_weight: float = 0.05
    lr_end: float = 1.0  # phase 3's learning rate falls along a cosine to this fraction; 1 = constant (see ema_decay)
    uncond_p: float = 0.1
    curriculum: int = 500  # UNet steps whose captions always name everything (absolute, see ema_decay)
    drop_probs: dict[str, float] = field(default_factory=lambda: {
        "size": 0.5, "colour": 0.15, "shape": 0.15, "position": 0.25, "background": 0.25})
    early_drop_probs: dict[str, float] = field(default_factory=lambda: {"size": 0.3})
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if len(self.anneal_seed_offsets) != len(self.anneal_lrs):
            raise ValueError(f"--anneal-lrs {self.anneal_lrs} and --anneal-seed-offsets {self.anneal_seed_offsets} "
                             "need one entry per anneal")
        if len(self.unet_attention) != len(self.unet_channels):
            raise ValueError(f"--unet-attention {self.unet_attention} needs one entry per level of "
                             f"--unet-channels {self.unet_channels}")


# ---------------------------------------------------------------- model construction

def build_vae(cfg: Config):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                        up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=list(cfg.vae_channels),
                        layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=cfg.image_size,
                        scaling_factor=SCALE_FACTOR)
    with torch.no_grad():  # start nearly deterministic: a wide posterior swamps the decoder early on
        vae.quant_conv.bias[4:].fill_(-8.0)
    return vae


def down_block_types(cfg: Config) -> list[str]:
    return ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention]


def build_unet(cfg: Config):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.image_size // 2 ** (len(cfg.vae_channels) - 1), in_channels=4, out_channels=4,
        block_out_channels=list(cfg.unet_channels), layers_per_block=cfg.unet_layers_per_block,
        down_block_types=down_block_types(cfg),
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention)],
        cross_attention_dim=cfg.text_hidden, attention_head_dim=8,  # SD1 meaning: 8 heads
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu", use_linear_projection=False)


def build_text_encoder(cfg: Config):
    from transformers import CLIPTextConfig, CLIPTextModel

    conf = CLIPTextConfig(vocab_size=49408, hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
                          num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_hidden // 64,
                          max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                          projection_dim=cfg.text_hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    model = CLIPTextModel(conf)
    if cfg.token_init_std != 0.02:
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=cfg.token_init_std)
    return model


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


# ---------------------------------------------------------------- schedule and sampling (SD1, k-diffusion formulas)

def sd_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    lo = t.floor().long().clamp(0, len(log_sigmas) - 1)
    hi = (lo + 1).clamp(max=len(log_sigmas) - 1)
    w = t - lo
    return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    ls = sigma.log()
    idx = (ls[:, None] >= log_sigmas[None, :]).sum(1).sub(1).clamp(0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[idx], log_sigmas[idx + 1]
    w = ((lo - ls) / (lo - hi)).clamp(0, 1)
    return (1 - w) * idx + w * (idx + 1)


def encode_prompts(parts: dict, prompts: list[str]) -> torch.Tensor:
    ids = parts["tokenizer"](prompts, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
    return parts["text_encoder"](ids).last_hidden_state


def sample_euler_ancestral(parts: dict, prompts: list[str], seed: int, steps: int = 20, cfg: float = 7.0,
                           size: int = 64, negative: str = "") -> list[np.ndarray]:
    """Development sampler (the app uses its own engine): Euler a with A1111's CFG formula."""
    unet, vae = parts["unet"], parts["vae"]
    ac = sd_alphas_cumprod()
    log_sigmas = ((1 - ac) / ac).sqrt().log().float()
    sigmas = torch.cat([t_to_sigma(torch.linspace(999, 0, steps, dtype=torch.float64).float(), log_sigmas),
                        torch.zeros(1)])
    cond = encode_prompts(parts, prompts)
    uncond = encode_prompts(parts, [negative] * len(prompts))
    ctx = torch.cat([uncond, cond])
    gen = torch.Generator().manual_seed(seed)
    lat = size // vae_factor(vae)
    x = torch.randn(len(prompts), 4, lat, lat, generator=gen) * sigmas[0]
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        t = sigma_to_t(s[None], log_sigmas).expand(2 * len(prompts))
        xin = torch.cat([x, x]) / (s ** 2 + 1) ** 0.5
        eps_u, eps_c = unet(xin, t, ctx).sample.chunk(2)
        denoised = x - s * (eps_u + cfg * (eps_c - eps_u))
        s_up = min(s_next, (s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2) ** 0.5)
        s_down = (s_next ** 2 - s_up ** 2) ** 0.5
        x = denoised + (x - denoised) / s * s_down
        if s_next > 0:
            x = x + torch.randn(x.shape, generator=gen) * s_up
    img = vae.decode(x / SCALE_FACTOR).sample.clamp(-1, 1)
    return list(((img + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())


def grow_unet(cfg: Config, unet):
    """`unet` with cfg.unet_attention's layout: attention blocks it lacks are added as identities (zero proj_out),
    so the function is unchanged until they train."""
    grown = build_unet(cfg)
    missing, unexpected = grown.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(".attentions." not in k for k in missing):
        raise ValueError(f"cannot grow this UNet into --unet-attention {cfg.unet_attention}")
    with torch.no_grad():
        for name, module in grown.named_modules():
            if name.endswith("proj_out") and any(k.startswith(name + ".") for k in missing):
                module.weight.zero_(), module.bias.zero_()
    return grown


def load_unet_and_text_encoder(folder: Path) -> tuple:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    return (UNet2DConditionModel.from_pretrained(folder / "unet"),
            CLIPTextModel.from_pretrained(folder / "text_encoder"))


def load_single_file(path: Path) -> dict:
    """A single-file SD1 checkpoint loaded by the engine, as any user's file is, as plain float32 modules."""
    from webui.engine.engine import Engine

    sd = Engine(device="cpu").load_checkpoint(path)
    encoder = sd.prompt_encoder.encoders[0]
    parts = {"tokenizer": encoder.tokenizer}
    for name, module in (("unet", sd.unet), ("vae", sd.vae), ("text_encoder", encoder.model)):
        fresh = type(module)(module.config) if name == "text_encoder" else type(module).from_config(module.config)
        fresh.load_state_dict({k: v.float() for k, v in module.state_dict().items()})
        parts[name] = fresh.eval()
    return parts


def load_model(path: Path) -> dict:
    """A diffusers folder written by this program, or a single-file checkpoint."""
    return load_single_file(path) if Path(path).is_file() else load_components(path)


def load_components(folder: Path) -> dict:
    """A diffusers-format model folder written by this program (vae/, unet/, text_encoder/)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    unet, text_encoder = load_unet_and_text_encoder(folder)
    parts = {"vae": AutoencoderKL.from_pretrained(folder / "vae"), "unet": unet, "text_encoder": text_encoder,
             "tokenizer": load_tokenizer()}
    for m in ("vae", "unet", "text_encoder"):
        parts[m].eval()
    return parts


# ---------------------------------------------------------------- phase 1: VAE

def to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def edge_l1(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 on horizontal and vertical finite differences: penalises soft or misplaced edges."""
    dy = F.l1_loss(recon[..., 1:, :] - recon[..., :-1, :], x[..., 1:, :] - x[..., :-1, :])
    dx = F.l1_loss(recon[..., :, 1:] - recon[..., :, :-1], x[..., :, 1:] - x[..., :, :-1])
    return dx + dy


def colour_l1(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 of 4x4 block means: weights flat-colour fidelity (red must not drift to orange) on top of per-pixel losses."""
    return F.l1_loss(F.avg_pool2d(recon, 4), F.avg_pool2d(x, 4))


def train_vae(cfg: Config, vae, work: Path, log) -> None:
    sampler = ShapesSampler(cfg.seed + 100, cfg.image_size, p_two=cfg.p_two)
    rng = np.random.default_rng(cfg.seed + 101)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = cosine_schedule(opt, cfg.vae_steps, warmup=50)
    f = vae_factor(vae)
    vae.train()
    for step in range(1, cfg.vae_steps + 1):
        x = to_tensor(sampler.batch(cfg.vae_batch)[0])
        i, j = (rng.integers(0, (cfg.image_size - cfg.vae_crop) // f + 1, size=2) * f).tolist()
        x = x[:, :, i:i + cfg.vae_crop, j:j + cfg.vae_crop]
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        loss = (F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + edge_l1(recon, x)
                + cfg.vae_colour_weight * colour_l1(recon, x) + 1e-6 * post.kl().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.vae_steps:
            log(f"vae step {step}/{cfg.vae_steps} loss {loss.item():.4f}")
    vae.eval()


@torch.no_grad()
def vae_report(vae, grid_path: Path) -> float:
    """Mean L1 (in [-1, 1] units) on 16 fresh full-size images; writes originals over reconstructions."""
    import cv2

    x = to_tensor(ShapesSampler(99_999).batch(16)[0])
    recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    both = ((torch.cat([x, recon], dim=2) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    cv2.imwrite(str(grid_path), np.concatenate(list(both), axis=1)[:, :, ::-1])
    return (recon - x).abs().mean().item()


def refine_decoder(cfg: Config, vae, log, steps: int, round_index: int = 0, save=None, lr: float | None = None,
                   colour_weight: float = 0.0) -> None:
    """Sharpen the decoder on full-size images with the encoder frozen, so latents (and the UNet) are unaffected."""
    torch.manual_seed(cfg.seed + 150 + 10 * round_index)
    sampler = ShapesSampler(cfg.seed + 151 + 10 * round_index, cfg.image_size, p_two=cfg.p_two)
    frozen = list(vae.encoder.parameters()) + list(vae.quant_conv.parameters())
    for prm in frozen:
        prm.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=lr or cfg.decoder_lr, weight_decay=0.0)
    sched = cosine_schedule(opt, steps, warmup=20)
    vae.train()
    for step in range(1, steps + 1):
        x = to_tensor(sampler.batch(cfg.vae_batch)[0])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        recon = vae.decode(z).sample
        loss = (F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 2.0 * edge_l1(recon, x)
                + colour_weight * colour_l1(recon, x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            log(f"decoder round {round_index} step {step}/{steps} loss {loss.item():.4f}")
        if save is not None and step % 250 == 0:
            save(vae)  # intermediate decoders, for looking at a run that is still going
    for prm in frozen:
        prm.requires_grad_(True)
    vae.eval()


@torch.no_grad()
def copy_latent_normalisation(raw, folded, target) -> None:
    """Apply to `target` (raw latent space, same encoder as `raw`) the fold that turned `raw` into `folded`."""
    fw, rw = folded.quant_conv.weight[:4].double().flatten(1), raw.quant_conv.weight[:4].double().flatten(1)
    k = (fw * rw).sum(1) / (rw * rw).sum(1)
    m = raw.quant_conv.bias[:4].double() - folded.quant_conv.bias[:4].double() / k
    target.quant_conv.load_state_dict(folded.quant_conv.state_dict())
    pw, pb = target.post_quant_conv.weight.double(), target.post_quant_conv.bias.double()
    target.post_quant_conv.bias.copy_(pb + pw[:, :, 0, 0] @ m)
    target.post_quant_conv.weight.copy_(pw / k[None, :, None, None])


# ---------------------------------------------------------------- phase 2: latents

def training_batches(cfg: Config, held_out: frozenset):
    """The UNet's training images and scenes, in chunks of 256 (the chunking is part of the draw order)."""
    sampler = ShapesSampler(cfg.seed + 200, cfg.image_size, held_out=held_out, p_two=cfg.p_two)
    for start in range(0, cfg.train_images, 256):
        imgs, _, scenes = sampler.batch(min(256, cfg.train_images - start))
        yield imgs, scenes


@torch.no_grad()  # without it autograd keeps every chunk's graph: 24 GB for the 12,000 images
def encode_dataset(cfg: Config, vae, held_out: frozenset, log) -> tuple[torch.Tensor, list[Scene]]:
    chunks, scenes = [], []
    for imgs, sc in training_batches(cfg, held_out):
        chunks.append(vae.encode(to_tensor(imgs)).latent_dist.mode())
        scenes += sc
    log(f"encoded {len(scenes)} training images")
    return torch.cat(chunks), scenes


def object_masks(cfg: Config, held_out: frozenset, scenes: list[Scene], factor: int) -> torch.Tensor:
    """(n, h, w) 0/1 masks of the latent pixels that touch an object, one pixel wider, for encode_dataset's
    images: they are rendered again from the same seed (cheap), so the latent cache needs no masks."""
    chunks, again = [], []
    for imgs, sc in training_batches(cfg, held_out):
        bg = torch.tensor([COLOURS[s.background] for s in sc])[:, None, None, :]
        pixels = (torch.from_numpy(imgs).int() - bg).abs().amax(dim=-1).gt(8).float()[:, None]
        blocks = F.max_pool2d(pixels, factor)
        chunks.append(F.max_pool2d(blocks, 3, stride=1, padding=1)[:, 0])
        again += sc
    if again != scenes:
        raise ValueError("the latent cache does not come from this data seed")
    return torch.cat(chunks)


@torch.no_grad()
def rewrite_latent_space(vae, k: torch.Tensor, m: torch.Tensor) -> None:
    """Make the VAE's latent z' = k (z - m) per channel, exactly, by rewriting its 1x1 quant convs (in float64):
    quant_conv's mean rows are scaled/shifted and its log-variance biases move by 2 log k; post_quant_conv undoes
    it on its input side."""
    q, pq = vae.quant_conv, vae.post_quant_conv
    qw, qb = q.weight.double(), q.bias.double()
    qw[:4] *= k[:, None, None, None]
    qb[:4] = (qb[:4] - m) * k
    qb[4:] += 2 * k.log()
    pw, pb = pq.weight.double(), pq.bias.double()
    pb = pb + pw[:, :, 0, 0] @ m
    pw = pw / k[None, :, None, None]
    q.weight.copy_(qw), q.bias.copy_(qb), pq.weight.copy_(pw), pq.bias.copy_(pb)


@torch.no_grad()
def fold_latent_normalisation(vae, latents: torch.Tensor) -> torch.Tensor:
    """Make SD's `latents * 0.18215` zero-mean/unit-std per channel: k = 1 / (0.18215 std)."""
    m = latents.mean(dim=(0, 2, 3)).double()
    k = 1.0 / (SCALE_FACTOR * latents.std(dim=(0, 2, 3)).double())
    rewrite_latent_space(vae, k, m)
    # What the UNet sees: the new latents times the scaling factor (zero mean, unit std).
    return ((latents.double() - m[None, :, None, None]) * k[None, :, None, None] * SCALE_FACTOR).float()


def scale_latent_space(vae, latents: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply the VAE's latents by `factor` (see rewrite_latent_space); returns latents x factor.

    Applied after the decoder rounds, so that the decoder they train does not depend on the factor.
    """
    rewrite_latent_space(vae, torch.full((4,), factor, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    return latents * factor


# ---------------------------------------------------------------- phase 3: UNet + text encoder

def cosine_factor(step: int, total: int, end: float) -> float:
    """1 at step 0, falling along a half cosine to `end` at `total`."""
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def cosine_schedule(opt, total: int, warmup: int):
    """The VAE phases' rate: a linear warm-up, then a cosine to 5% over the remaining steps."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return cosine_factor(step - warmup, total - warmup, 0.05)
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class CaptionBatcher:
    """Captions for training scenes with curriculum-dependent attribute dropping and CFG dropout."""

    def __init__(self, cfg: Config, tokenizer):
        self.cfg = cfg
        self.rng = random.Random(cfg.seed + 300)
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def ids(self, text: str) -> torch.Tensor:
        if text not in self.cache:
            self.cache[text] = self.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                                              return_tensors="pt").input_ids[0]
        return self.cache[text]

    def __call__(self, scenes: list[Scene], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (n, 77) and the attributes each caption states (n, len(ATTRIBUTES)), see caption_labels."""
        probs = self.cfg.early_drop_probs if step <= self.cfg.curriculum else self.cfg.drop_probs
        texts, labels = [], []
        for s in scenes:
            if self.rng.random() < self.cfg.uncond_p:
                texts.append("")
                labels.append(caption_labels(None, frozenset()))
                continue
            drop = frozenset(k for k, p in probs.items() if self.rng.random() < p)
            texts.append(caption(s, drop))
            labels.append(caption_labels(s, drop))
        return torch.stack([self.ids(t) for t in texts]), torch.tensor(labels)


ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS),
              "background": list(COLOURS), "count": [1, 2]}


def caption_labels(scene: Scene | None, drop: frozenset[str]) -> list[int]:
    """Per attribute: 0 if the caption does not state it, else 1 + the index of its value."""
    if scene is None:
        return [0] * len(ATTRIBUTES)
    values = {"colour": scene.colour, "shape": scene.shape, "size": scene.size, "background": scene.background,
              "position": scene.positions[0] if scene.count == 1 else None, "count": scene.count}
    return [0 if name in drop or values[name] is None else 1 + choices.index(values[name])
            for name, choices in ATTRIBUTES.items()]


class AttributeHeads(torch.nn.Module):
    """Training-only cosine classifiers on the mean end-of-text/padding state (see Config.text_aux_weight)."""

    def __init__(self, hidden: int, eos: int = 49407, temperature: float = 10.0):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, 1 + len(v), bias=False) for v in ATTRIBUTES.values())
        self.eos, self.temperature = eos, temperature

    def pooled(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The mean of the end-of-text and padding states (SD1 pads with the end-of-text token)."""
        mask = (ids == self.eos).float()[..., None]
        return (hidden * mask).sum(1) / mask.sum(1)

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pooled = F.normalize(self.pooled(hidden, ids), dim=-1)
        return sum(F.cross_entropy(self.temperature * pooled @ F.normalize(h.weight, dim=-1).T, labels[:, i])
                   for i, h in enumerate(self.heads)) / len(self.heads)


def pyramid_noise(shape: tuple, gen: torch.Generator, discount: float) -> torch.Tensor:
    """White noise plus bilinearly upsampled coarser noise (h/2, h/4, … 2×2) weighted discount**level, unit std.

    Why: on 16×16 latents the scaled-linear schedule leaves enough of x0's low frequencies in x_t for the UNet to
    read the layout from the noise instead of the prompt; white noise at sampling time then decides positions.
    """
    noise = torch.randn(shape, generator=gen)
    if discount <= 0:
        return noise
    b, c, h, w = shape
    level, size = 1, h // 2
    while size >= 2:
        coarse = torch.randn(b, c, size, size * w // h, generator=gen)
        noise = noise + discount ** level * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        level, size = level + 1, size // 2
    return noise / noise.std()


def loss_weights(snr: torch.Tensor, floor: float, gamma: float) -> torch.Tensor:
    """Per-timestep weights of the epsilon loss: the x0-space weight is SNR clamped to [floor, gamma].

    The epsilon loss equals SNR times the x0 loss, so plain epsilon training gives x0 a weight of ~0.005 at
    the high-noise steps where position and shape are decided. The ceiling is min-SNR-gamma.
    """
    return snr.clamp(min=floor, max=gamma) / snr


def timesteps_and_weights(cfg: Config, n: int, gen: torch.Generator, weight: torch.Tensor,
                          snr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Uniform timesteps, except a leading `high_t_share` of the batch drawn from [high_t_from, 999] and a
    trailing `terminal_share` at t=999; returns (t, loss weights, number of terminal samples)."""
    t = torch.randint(0, 1000, (n,), generator=gen)
    w = weight[t]
    k = round(cfg.high_t_share * n)
    if k:
        t[:k] = torch.randint(cfg.high_t_from, 1000, (k,), generator=gen)
        w[:k] = torch.maximum(weight[t[:k]], cfg.high_t_x0_weight / snr[t[:k]])
    m = round(cfg.terminal_share * n)
    if m:
        t[n - m:] = 999
        w[n - m:] = cfg.terminal_x0_weight / snr[999]
    return t, w, m


def noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, ac: torch.Tensor,
           terminal: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, epsilon target). The last `terminal` samples get pure noise and the target that denoises to x0."""
    a = ac[t].sqrt()[:, None, None, None]
    s = (1 - ac[t]).sqrt()[:, None, None, None]
    x_t, target = a * x0 + s * noise, noise
    if terminal:
        target = noise.clone()  # x_t is already a fresh tensor
        x_t[-terminal:] = s[-terminal:] * noise[-terminal:]
        target[-terminal:] = noise[-terminal:] - a[-terminal:] / s[-terminal:] * x0[-terminal:]
    return x_t, target


def foreground_masks(cfg: Config, masks: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The batch's object masks, emptied for the samples at or above cfg.foreground_max_t."""
    return masks * (t < cfg.foreground_max_t)[:, None, None]


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor | None,
                    foreground_weight: float) -> torch.Tensor:
    """Mean squared error per sample; with masks, a weighted mean where object pixels weigh 1 + foreground_weight."""
    err = (pred - target) ** 2
    if masks is None:
        return err.mean(dim=(1, 2, 3))
    weight = 1 + foreground_weight * masks[:, None]
    return (err * weight).sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) * err.shape[1])


def train_diffusion(cfg: Config, unet, text_encoder, ema_unet, ema_text_encoder, latents: torch.Tensor,
                    scenes: list[Scene], save, log, masks: torch.Tensor | None = None,
                    heads: AttributeHeads | None = None) -> None:
    """Joint UNet + text encoder training; `save` is called with the EMA copies' tag at checkpoints. With `masks`
    (object_masks) the loss weighs the objects by cfg.foreground_weight; with `heads` it adds their attribute loss
    (cfg.text_aux_weight)."""
    captions = CaptionBatcher(cfg, load_tokenizer())
    gen = torch.Generator().manual_seed(cfg.seed + 400)
    ac = sd_alphas_cumprod().float()
    snr = ac / (1 - ac)
    weight = loss_weights(snr, cfg.snr_floor, cfg.min_snr_gamma)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params + (list(heads.parameters()) if heads else []), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / cfg.warmup)
                                              * cosine_factor(step, cfg.unet_steps, cfg.lr_end))
    ema_params = list(ema_unet.parameters()) + list(ema_text_encoder.parameters())
    unet.train(), text_encoder.train()
    order = torch.randperm(len(latents), generator=gen)
    pos, t0 = 0, time.time()
    for step in range(1, cfg.unet_steps + 1):
        if pos + cfg.batch > len(order):
            order, pos = torch.randperm(len(latents), generator=gen), 0
        idx = order[pos:pos + cfg.batch]
        pos += cfg.batch
        x0 = latents[idx]
        ids, labels = captions([scenes[i] for i in idx.tolist()], step)
        noise = pyramid_noise(x0.shape, gen, cfg.pyramid_noise_discount)
        noise = noise + cfg.offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=gen)
        t, w, terminal = timesteps_and_weights(cfg, x0.shape[0], gen, weight, snr)
        x_t, target = noised(x0, noise, t, ac, terminal)
        hidden = text_encoder(ids).last_hidden_state
        pred = unet(x_t, t, hidden).sample
        fg = foreground_masks(cfg, masks[idx], t) if masks is not None else None
        loss = per_sample_loss(pred, target, fg, cfg.foreground_weight).mul(w).mean()
        aux = heads(hidden, ids, labels) if heads else torch.zeros(())
        loss = loss + cfg.text_aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        if step % 25 == 0:
            rate = step * cfg.batch / (time.time() - t0)
            log(f"unet step {step}/{cfg.unet_steps} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} "
                + (f"attribute loss {aux.item():.3f} " if heads else "") + f"{rate:.1f} samples/s")
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            save(f"step{step:05d}")
    unet.eval(), text_encoder.eval()


def finish_config(cfg: Config) -> Config:
    """Phase 3b (Config.finish_steps)."""
    return replace(cfg, unet_steps=cfg.finish_steps, terminal_share=cfg.finish_terminal_share, curriculum=0,
                   warmup=10, lr_end=cfg.finish_lr_end)


def anneal_config(cfg: Config, index: int) -> Config:
    """Phase 3c (index 1), 3d (2), ... (Config.anneal_lrs, Config.anneal_seed_offsets)."""
    return replace(cfg, unet_steps=cfg.anneal_steps, lr=cfg.anneal_lrs[index - 1], terminal_share=0.0,
                   seed=cfg.seed + cfg.anneal_seed_offsets[index - 1],
                   curriculum=0, warmup=10, lr_end=0.0)


def continue_training(cfg: Config, phase: Config, tag: str, ema_unet, ema_text_encoder, latents: torch.Tensor,
                      scenes: list[Scene], save, log, masks: torch.Tensor | None = None,
                      heads: AttributeHeads | None = None) -> None:
    """Phases 3b, 3c, ...: a fresh optimiser from the EMA weights so far (which it updates), reseeded like phase 3
    (or from the anneal's own seed, Config.anneal_seed_offsets)."""
    seed_everything(phase.seed, cfg.threads)
    unet, text_encoder = copy.deepcopy(ema_unet), copy.deepcopy(ema_text_encoder)
    train_diffusion(phase, unet, text_encoder, ema_unet, ema_text_encoder, latents, scenes,
                    lambda step: save(tag + step), log, masks, heads)


# ---------------------------------------------------------------- export

def export_single_file(folder: Path, out: Path) -> int:
    """Write the diffusers folder as one fp16 SD1 single-file checkpoint; returns its size in bytes."""
    from webui.engine.checkpoint_writer import clip_l_to_ldm, save_single_file, unet_to_ldm, vae_to_ldm

    parts = load_components(folder)
    state = {}
    state.update(unet_to_ldm(parts["unet"]))
    state.update(vae_to_ldm(parts["vae"]))
    state.update(clip_l_to_ldm(parts["text_encoder"], prefix="cond_stage_model.transformer."))
    out.parent.mkdir(parents=True, exist_ok=True)
    # the loader reads the natural (default) size from this key; without it SD1 files default to 512×512
    save_single_file(out, state, dtype=torch.float16,
                     metadata={"modelspec.architecture": "stable-diffusion-v1", "modelspec.resolution": "64x64"})
    return out.stat().st_size


# ---------------------------------------------------------------- driver

def polish_decoder(cfg: Config, vae, work: Path, log) -> None:
    """Phases 2b and 2c on a normalised VAE; writes <work>/vae_polished. Only the decoder changes, so the latents
    (and phase 3) do not depend on it. It runs before phase 3 rather than beside it: on 2 cores a second process
    slowed phase 3 to 7-9 samples/s, which cost more than the polish saved."""
    keep = lambda v: v.save_pretrained(work / "vae_polishing")  # noqa: E731
    refine_decoder(cfg, vae, log, cfg.polish_steps, round_index=1, save=keep)
    # the colour round reuses round 1's data seeds (that is how the shipped decoder was made)
    refine_decoder(cfg, vae, log, cfg.colour_steps, round_index=1, save=keep, lr=cfg.colour_lr, colour_weight=1.0)
    log(f"polished vae L1: {vae_report(vae, work / 'vae_polished.png'):.4f}")
    vae.save_pretrained(work / "vae_polished")


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def comma_separated(kind: type):
    """An argparse type for a tuple flag such as `--unet-channels 64,96,128` or `--anneal-lrs 3e-4,1e-4`."""
    return lambda text: tuple(kind(v) for v in text.split(","))


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, required=True, help="intermediate diffusers checkpoints and log")
    ap.add_argument("--out", type=Path, default=ROOT / "models/Stable-diffusion/demo-shapes-v1.safetensors")
    ap.add_argument("--resume-vae", type=Path,
                    help="reuse a VAE folder from an earlier run, or a single-file checkpoint's VAE (skips phase 1)")
    ap.add_argument("--export-only", type=Path, help="only convert this diffusers folder to --out")
    ap.add_argument("--resume-unet", type=Path,
                    help="take phase 3's result (unet/, text_encoder/) from this folder, or from a single-file "
                         "checkpoint, instead of training it")
    ap.add_argument("--refine-only", type=Path,
                    help="run phase 1b alone on <work-dir>/vae_raw and "
                         "write <work-dir>/vae_refined, normalised like this folder's vae/")
    ap.add_argument("--polish-only", type=Path,
                    help="run phases 2b and 2c alone on this normalised VAE folder and write <work-dir>/vae_polished")
    defaults = Config()
    for name, value in asdict(defaults).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
        elif isinstance(value, tuple):
            ap.add_argument("--" + name.replace("_", "-"), type=comma_separated(type(value[0])), default=value)
    args = ap.parse_args(argv)
    try:
        cfg = Config(**{k: getattr(args, k) for k in asdict(defaults) if hasattr(args, k)})
    except ValueError as e:
        ap.error(str(e))
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if args.export_only:
        print(f"wrote {args.out} ({export_single_file(args.export_only, args.out) / 1e6:.2f} MB)")
        return 0
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    logfile = open(work / "train.log", "a")
    start = time.time()

    def log(msg: str) -> None:
        line = f"[{time.time() - start:7.0f}s] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    seed_everything(cfg.seed, cfg.threads)  # each phase reseeds, so --resume-vae gives identical results
    from diffusers import AutoencoderKL
    if args.polish_only:
        polish_decoder(cfg, AutoencoderKL.from_pretrained(args.polish_only), work, log)
        return 0
    if args.refine_only:
        vae = AutoencoderKL.from_pretrained(work / "vae_raw")
        refine_decoder(cfg, vae, log, cfg.decoder_steps)
        log(f"refined vae L1: {vae_report(vae, work / 'vae_refined.png'):.4f}")
        copy_latent_normalisation(AutoencoderKL.from_pretrained(work / "vae_raw"),
                                  AutoencoderKL.from_pretrained(args.refine_only), vae)
        vae.save_pretrained(work / "vae_refined")
        return 0
    if args.resume_vae:
        vae = (load_single_file(args.resume_vae)["vae"] if args.resume_vae.is_file()
               else AutoencoderKL.from_pretrained(args.resume_vae).eval())
    else:
        vae = build_vae(cfg)
        train_vae(cfg, vae, work, log)
    vae.save_pretrained(work / "vae_raw")
    log(f"vae reconstruction L1 on held-back images: {vae_report(vae, work / 'vae_recon.png'):.4f}")
    if cfg.decoder_steps:
        refine_decoder(cfg, vae, log, cfg.decoder_steps)
        log(f"refined vae L1: {vae_report(vae, work / 'vae_refined.png'):.4f}")
    held_out = frozenset(s.key() for s in eval_scenes())
    cache = work / "latents.pt"  # raw latents depend only on the encoder and the data seed
    if args.resume_vae and cache.exists():
        saved = torch.load(cache, weights_only=False)
        latents, scenes = saved["latents"], saved["scenes"]
    else:
        latents, scenes = encode_dataset(cfg, vae, held_out, log)
        torch.save({"latents": latents, "scenes": scenes}, cache)
    latents = fold_latent_normalisation(vae, latents)
    vae.save_pretrained(work / "vae_folded")
    if cfg.polish_steps or cfg.colour_steps:
        polish_decoder(cfg, vae, work, log)
    if cfg.latent_std != 1.0:
        latents = scale_latent_space(vae, latents, cfg.latent_std)
    log(f"UNet-space latents {tuple(latents.shape)} mean {latents.mean().item():.3f} std {latents.std().item():.3f}")

    if args.resume_unet:
        if args.resume_unet.is_file():
            resumed = load_single_file(args.resume_unet)
            unet, text_encoder = resumed["unet"], resumed["text_encoder"]
        else:
            unet, text_encoder = load_unet_and_text_encoder(args.resume_unet)
        if list(unet.config.down_block_types) != down_block_types(cfg):
            unet = grow_unet(cfg, unet)
    else:
        torch.manual_seed(cfg.seed + 1000)
        unet, text_encoder = build_unet(cfg), build_text_encoder(cfg)
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in
              (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    log(f"parameters {counts}")

    ema_unet, ema_text_encoder = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    heads = AttributeHeads(cfg.text_hidden) if cfg.text_aux_weight else None  # kept across phases 3 to 3e

    def save(tag: str) -> None:
        folder = work / tag
        ema_unet.save_pretrained(folder / "unet")
        ema_text_encoder.save_pretrained(folder / "text_encoder")
        vae.save_pretrained(folder / "vae")
        (work / "latest").unlink(missing_ok=True)
        (work / "latest").symlink_to(folder.name)
        log(f"saved {folder}")

    if not args.resume_unet:
        train_diffusion(cfg, unet, text_encoder, ema_unet, ema_text_encoder, latents, scenes, save, log,
                        heads=heads)
    if cfg.finish_steps:
        continue_training(cfg, finish_config(cfg), "finish_", ema_unet, ema_text_encoder, latents, scenes, save, log,
                          heads=heads)
    anneals = len(cfg.anneal_lrs) if cfg.anneal_steps else 0
    masks = object_masks(cfg, held_out, scenes, vae_factor(vae)) if cfg.foreground_weight and anneals else None
    for i in range(1, anneals + 1):
        continue_training(cfg, anneal_config(cfg, i), f"anneal{i}_", ema_unet, ema_text_encoder, latents, scenes,
                          save, log, masks, heads)
    save("final")
    try:
        size = export_single_file(work / "final", args.out)
        log(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    except ImportError as e:
        log(f"export skipped ({e}); run again with --export-only {work / 'final'}")
    log(f"total {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
