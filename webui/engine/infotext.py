"""A1111-compatible infotext: the "parameters" text stored in generated images.

Format (A1111 `processing.create_infotext` / `infotext_utils.parse_generation_parameters`):

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>     (omitted when empty)
    Key: value, Key: value, ...

Values containing ',', ':' or a newline are written as JSON strings.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from os import PathLike
from typing import Any

from packaging import version
from PIL import Image, PngImagePlugin

# A1111 v1.10 fixed slots, in order. Everything else goes after them (extra params), then TRAILING_KEYS.
FIXED_KEYS: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE",
    "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength",
    "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr",
    "Init image hash", "RNG", "Tiling",
)
TRAILING_KEYS: tuple[str, ...] = ("Version", "User")

# Keys whose value is "WxH"; a (w, h) pair given for them is formatted that way.
SIZE_KEYS = frozenset({"Size", "Seed resize from", "Hires resize"})

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_PREFIX = "Negative prompt:"

# Filled in by parse_infotext when missing, with A1111's values and types ("Clip skip" really is a str).
PARSE_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
}


# ---------------------------------------------------------------------------------------------- writing

def quote(value: Any) -> Any:
    """A1111's `quote`: JSON-encode values containing ',', newline or ':'; others unchanged."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(value, ensure_ascii=False)


def _normalize(key: str, value: Any) -> Any:
    """Apply the conditions A1111 writes inline in create_infotext (None means "leave out")."""
    if key in SIZE_KEYS and isinstance(value, (tuple, list)) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if key == "Clip skip" and value is not None and int(value) <= 1:
        return None
    if key == "RNG" and value == "GPU":
        return None
    if key == "Tiling":
        return "True" if value else None
    return value


def generation_params(fixed: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
                      trailing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Order parameters as A1111 does: FIXED_KEYS, then `extra` in its order, then Version/User.

    `fixed` may only use FIXED_KEYS. An `extra` key that is also a fixed key keeps the fixed slot and takes
    the extra value (a duplicate in A1111's dict literal). Clip skip <= 1, RNG "GPU" and Tiling False are
    dropped, and (w, h) pairs for size keys become "WxH", as A1111's create_infotext does.
    """
    unknown = set(fixed) - set(FIXED_KEYS)
    if unknown:
        raise ValueError(f"not fixed A1111 infotext keys (pass them as extra): {sorted(unknown)}")
    extra = dict(extra or {})
    trailing = dict(trailing or {})
    out: dict[str, Any] = {}
    for key in FIXED_KEYS:
        out[key] = extra.pop(key) if key in extra else fixed.get(key)
    for key, value in extra.items():
        if key not in TRAILING_KEYS:
            out[key] = value
        else:
            trailing.setdefault(key, value)
    for key in TRAILING_KEYS:
        out[key] = trailing.get(key)
    return {k: v for k, v in ((k, _normalize(k, v)) for k, v in out.items()) if v is not None}


def format_params(params: Mapping[str, Any]) -> str:
    """The last infotext line. None values are dropped; a value equal to its key is written alone."""
    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)


def create_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Build the infotext from already-ordered params (see `generation_params` for A1111's order)."""
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_params(params)}".strip()


# ---------------------------------------------------------------------------------------------- parsing

def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params_line(line: str) -> dict[str, Any]:
    """Parse "Key: value, ..." into a dict; "WxH" values become Key-1 / Key-2 (as strings).

    Empty values are skipped, as A1111 does (its parser raises on them and drops the key).
    """
    res: dict[str, Any] = {}
    for key, value in RE_PARAM.findall(line):
        if not value:
            continue
        if value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        m = RE_IMAGESIZE.match(value)
        if m is not None:
            res[f"{key}-1"] = m.group(1)
            res[f"{key}-2"] = m.group(2)
        else:
            res[key] = value
    return res


def split_infotext(text: str) -> tuple[str, str, str]:
    """Split into (prompt, negative prompt, params line). The last line is the params line only if the
    parameter regex matches at least 3 times in it; otherwise it belongs to the prompt."""
    *lines, lastline = text.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative), lastline


def parse_infotext(text: str, *, fill_defaults: bool = True, backcompat: bool = True) -> dict[str, Any]:
    """A1111's parse_generation_parameters without its settings-dependent parts (styles, skip-pasting).

    Values are strings as in A1111; "Prompt" and "Negative prompt" are always present.
    """
    prompt, negative, line = split_infotext(text)
    res: dict[str, Any] = {"Prompt": prompt, "Negative prompt": negative}
    res.update(parse_params_line(line))
    if not fill_defaults:
        return res
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"
    _fill_defaults(res)
    if backcompat:
        version_backcompat(res)
    return res


def _fill_defaults(res: dict[str, Any]) -> None:
    for key, value in PARSE_DEFAULTS.items():
        res.setdefault(key, value)
    _restore_old_hires_fix(res)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False


def old_hires_fix_first_pass_dimensions(width: int, height: int) -> tuple[int, int]:
    """Pre-1.0 hires fix: first pass at about 512*512 pixels, rounded up to multiples of 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_fix(res: dict[str, Any]) -> None:
    """Old infotexts store "First pass size"; convert to Size + Hires resize (A1111, default settings)."""
    fw, fh = res.get("First pass size-1"), res.get("First pass size-2")
    if fw is None or fh is None:
        return
    fw, fh = int(fw), int(fh)
    width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    if fw == 0 or fh == 0:
        fw, fh = old_hires_fix_first_pass_dimensions(width, height)
    res["Size-1"], res["Size-2"] = fw, fh
    res["Hires resize-1"], res["Hires resize-2"] = width, height


V1_6_0 = version.parse("1.6.0")
V1_7_0_TSNR = version.parse("v1.7.0-225")
V1_8_0 = version.parse("1.8.0")


def _parse_version(text: str | None) -> version.Version | None:
    if text is None:
        return None
    m = re.match(r"([^-]+-[^-]+)-.*", text)
    if m:
        text = m.group(1)
    try:
        return version.parse(text)
    except version.InvalidVersion:
        return None


def version_backcompat(res: dict[str, Any]) -> None:
    """Flags A1111 sets for infotexts written by older versions (infotext_versions.backcompat)."""
    ver = _parse_version(res.get("Version"))
    if ver is None:
        return
    if ver < V1_6_0 and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if ver < V1_6_0 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if ver < V1_7_0_TSNR:
        res["Downcast alphas_cumprod"] = True
    if ver < V1_8_0 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


# ---------------------------------------------------------------------------------------------- images

EXIF_IFD = 0x8769
EXIF_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_JIS_PREFIX = b"JIS\x00\x00\x00\x00\x00"


def png_info(infotext: str | None) -> PngImagePlugin.PngInfo:
    """A PngInfo with a `parameters` chunk (tEXt if Latin-1, iTXt otherwise, as Pillow's add_text does)."""
    info = PngImagePlugin.PngInfo()
    if infotext is not None:
        info.add_text("parameters", infotext)
    return info


def exif_with_user_comment(infotext: str) -> Image.Exif:
    """EXIF holding the infotext as UserComment in the "UNICODE" (UTF-16BE) encoding, as A1111/piexif write it."""
    exif = Image.Exif()
    exif[EXIF_IFD] = {EXIF_USER_COMMENT: _UNICODE_PREFIX + infotext.encode("utf-16-be")}
    return exif


def decode_user_comment(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    prefix, body = data[:8], data[8:]
    if prefix == _UNICODE_PREFIX:
        return body.decode(_utf16_codec(body), errors="replace")
    if prefix == _JIS_PREFIX:
        return body.decode("shift_jis", errors="replace")
    if prefix == _ASCII_PREFIX:
        return body.decode("ascii", errors="replace")
    return data.decode("utf-8", errors="replace").rstrip("\x00")


def _utf16_codec(body: bytes) -> str:
    """piexif writes big-endian; some tools write little-endian. Decide by a BOM, else by where the zero
    bytes of ASCII characters sit (even offsets in big-endian, odd in little-endian)."""
    if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    zeros_even = body[0::2].count(0)
    zeros_odd = body[1::2].count(0)
    return "utf-16-le" if zeros_odd > zeros_even else "utf-16-be"


def save_image_with_infotext(image: Image.Image, path: str | PathLike[str], infotext: str | None,
                             format: str | None = None, **save_kwargs: Any) -> None:
    """Save `image` with the infotext: PNG `parameters` chunk, or EXIF UserComment for JPEG/WebP."""
    fmt = (format or Image.registered_extensions().get(_suffix(path), "PNG")).upper()
    if fmt == "PNG":
        image.save(path, format="PNG", pnginfo=png_info(infotext), **save_kwargs)
        return
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if infotext is not None:
        save_kwargs["exif"] = exif_with_user_comment(infotext)
    image.save(path, format=fmt, **save_kwargs)


def _suffix(path: str | PathLike[str]) -> str:
    name = str(path)
    dot = name.rfind(".")
    return name[dot:].lower() if dot >= 0 else ""


def read_image_infotext(image: Image.Image) -> str | None:
    """The infotext of an opened image: PNG `parameters` text chunk, else EXIF UserComment, else None."""
    text = image.info.get("parameters")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text:
        return text
    try:
        comment = image.getexif().get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
    except Exception:  # malformed EXIF in a user-supplied image is not our error to raise
        return None
    if comment:
        decoded = decode_user_comment(comment)
        return decoded or None
    return None
