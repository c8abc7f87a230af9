"""ΔW for one module of a LoRA/LyCORIS file, as A1111's `networks` extension computes it.

Every format gives (ΔW, Δbias) for a target weight, before the user's multiplier:

- LoRA / LoCon: ΔW = up·down · α/r (conv k×k: down is the k×k conv, up a 1×1); with `lora_mid` (CP
  decomposition) ΔW[i,j,k,l] = Σ mid[n,m,k,l]·up[i,n]·down[m,j];
- LoHa: ΔW = (w1a·w1b) ⊙ (w2a·w2b) · α/r, r = rows of w1b; with `hada_t1/t2` each factor is rebuilt from
  its Tucker core;
- LoKr: ΔW = kron(w1, w2) with w1/w2 given or as a·b (w2 optionally with a Tucker core `lokr_t2`); α/r
  applies only when a factor is decomposed;
- full: ΔW = diff, Δb = diff_b;  norm: ΔW = w_norm, Δb = b_norm;  IA3: ΔW = W ⊙ w (per output row,
  or per input column with `on_input`);
- `dora_scale` (DoRA, LyCORIS layout): the merged weight is renormalised per input column.

Everything is computed in float32 on the target's device; α missing means scale 1.
"""
from __future__ import annotations

import torch

LORA_KEYS = ("lora_up.weight", "lora_down.weight")
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class UnsupportedModule(ValueError):
    """A module type this app does not apply (OFT, GLoRA, ...)."""


def module_type(weights: dict[str, torch.Tensor]) -> str:
    if all(k in weights for k in LORA_KEYS):
        return "lora"
    if all(k in weights for k in LOHA_KEYS):
        return "loha"
    if any(k.startswith("lokr_") for k in weights):
        return "lokr"
    if "diff" in weights:
        return "full"
    if "w_norm" in weights:
        return "norm"
    if "weight" in weights and "on_input" in weights:
        return "ia3"
    for marker, name in (("oft_", "oft"), ("a1.weight", "glora")):
        if any(k.startswith(marker) for k in weights):
            return name
    return "unknown"


def _f32(t: torch.Tensor, like: torch.Tensor, copy: bool = False) -> torch.Tensor:
    return t.to(device=like.device, dtype=torch.float32, copy=copy)


def _scale(weights: dict[str, torch.Tensor], dim: int | None) -> float:
    alpha = weights.get("alpha")
    if alpha is None or not dim:
        return 1.0
    return float(alpha) / dim


def _conventional(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    return up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)


def _cp(core: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """up [out, r] · core [r, r, k, k] · down [r, in] → [out, in, k, k] (LoCon `lora_mid`)."""
    return torch.einsum("n m k l, i n, m j -> i j k l", core, up.reshape(up.shape[0], -1),
                        down.reshape(down.shape[0], -1))


def _tucker(core: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS Tucker factor: wa [r, out], core [r, r, k, k], wb [r, in] → [out, in, k, k]."""
    temp = torch.einsum("i j k l, j r -> i r k l", core, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def _lora(w: dict[str, torch.Tensor], target: torch.Tensor, dyn_dim: int | None) -> tuple[torch.Tensor, float]:
    up, down = _f32(w["lora_up.weight"], target), _f32(w["lora_down.weight"], target)
    mid = w.get("lora_mid.weight")
    dim = down.shape[0]
    if dyn_dim:
        up, down = up[:, :dyn_dim], down[:dyn_dim]
    if mid is not None:
        return _cp(_f32(mid, target), up, down), _scale(w, dim)
    delta = _conventional(up, down)
    if down.ndim == 4:
        delta = delta.reshape(up.shape[0], down.shape[1], *down.shape[2:])
    return delta, _scale(w, dim)


def _loha(w: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, float]:
    f = {k: _f32(v, target) for k, v in w.items() if k != "alpha"}
    factors = []
    for i in (1, 2):
        a, b, t = f[f"hada_w{i}_a"], f[f"hada_w{i}_b"], f.get(f"hada_t{i}")
        factors.append(_tucker(t, a, b) if t is not None else _conventional(a, b))
    return factors[0] * factors[1], _scale(w, int(w["hada_w1_b"].shape[0]))


def _lokr_factor(f: dict[str, torch.Tensor], i: int) -> tuple[torch.Tensor, int | None]:
    if f"lokr_w{i}" in f:
        return f[f"lokr_w{i}"], None
    a, b = f[f"lokr_w{i}_a"], f[f"lokr_w{i}_b"]
    core = f.get(f"lokr_t{i}")
    return (_tucker(core, a, b) if core is not None else a @ b.reshape(b.shape[0], -1)), int(b.shape[0])


def _lokr(w: dict[str, torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, float]:
    f = {k: _f32(v, target) for k, v in w.items() if k != "alpha"}
    w1, dim1 = _lokr_factor(f, 1)
    w2, dim2 = _lokr_factor(f, 2)
    if w2.ndim == 4:
        w1 = w1.reshape(*w1.shape, 1, 1)
    dim = dim2 if dim2 is not None else dim1
    return torch.kron(w1, w2.contiguous()), _scale(w, dim)


def _ia3(w: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    scale = _f32(w["weight"], target)
    base = target.float()
    if bool(w["on_input"].reshape(-1)[0]):
        return base * scale.reshape(1, -1, *([1] * (base.ndim - 2)))
    return base * scale.reshape(-1, *([1] * (base.ndim - 1)))


def _dora(delta: torch.Tensor, target: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """A1111's apply_weight_decompose: renormalise W + ΔW per input column to `dora_scale`."""
    base = target.float()
    merged = delta + base
    norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
    norm = norm.reshape(merged.shape[1], *([1] * (merged.ndim - 1))).transpose(0, 1)
    return merged * (_f32(dora_scale, target) / norm) - base


def compute_delta(weights: dict[str, torch.Tensor], target: torch.Tensor, bias: torch.Tensor | None = None,
                  dyn_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ΔW shaped like `target`, Δbias or None) in float32, before the user's multiplier; new tensors that
    share no memory with `weights` or `target`, so the caller may change them in place.

    Raises UnsupportedModule for unknown module types and ValueError when ΔW cannot take the target's shape.
    """
    kind = module_type(weights)
    delta_b = None
    if kind == "lora":
        delta, scale = _lora(weights, target, dyn_dim)
    elif kind == "loha":
        delta, scale = _loha(weights, target)
    elif kind == "lokr":
        delta, scale = _lokr(weights, target)
    elif kind in ("full", "norm"):
        wkey, bkey = ("diff", "diff_b") if kind == "full" else ("w_norm", "b_norm")
        # copies: the caller scales ΔW in place, and these would otherwise alias the parsed file's tensors
        delta, scale = _f32(weights[wkey], target, copy=True), 1.0
        delta_b = _f32(weights[bkey], target, copy=True) if bkey in weights and bias is not None else None
    elif kind == "ia3":
        delta, scale = _ia3(weights, target), 1.0
    else:
        raise UnsupportedModule(f"unsupported network module type ({kind}: {', '.join(sorted(weights))})")
    if delta.numel() != target.numel():
        raise ValueError(f"ΔW has shape {tuple(delta.shape)}, the layer {tuple(target.shape)}")
    delta = delta.reshape(target.shape)
    if scale != 1.0:
        delta.mul_(scale)   # in place: every ΔW here is a tensor of its own, and fresh memory is what costs
    if "dora_scale" in weights:
        delta = _dora(delta, target, weights["dora_scale"])
    if delta_b is not None and delta_b.numel() != bias.numel():
        raise ValueError(f"Δbias has shape {tuple(delta_b.shape)}, the layer's bias {tuple(bias.shape)}")
    return delta, (None if delta_b is None else delta_b.reshape(bias.shape))
