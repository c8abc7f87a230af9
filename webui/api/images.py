"""Base64 images in and out of the API, with errors that name the field."""
from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

from ..engine import infotext as infotext_mod
from .errors import ApiError, field_error

_DATA_URI = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def _b64_bytes(data: str, field: str) -> bytes:
    if not isinstance(data, str) or not data.strip():
        raise field_error(field, "empty image; expected a base64-encoded image")
    text = data.strip()
    if text.lower().startswith(("http://", "https://")):
        raise field_error(field, "image URLs are not supported; send the image as base64")
    text = _DATA_URI.sub("", text, count=1)
    text = re.sub(r"\s+", "", text)
    text += "=" * (-len(text) % 4)   # some clients drop the padding
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise field_error(field, "not valid base64") from None


def decode_image(data: str, field: str, max_pixels: int | None = None) -> Image.Image:
    """A base64 string (with or without a `data:image/...;base64,` prefix) → a loaded PIL image.

    The image keeps its mode and `info` (png-info needs the text chunks); callers convert as they need.
    """
    raw = _b64_bytes(data, field)
    try:
        image = Image.open(io.BytesIO(raw))
        if max_pixels and image.width * image.height > max_pixels:
            raise field_error(field, f"image is {image.width}x{image.height}, more than the "
                                     f"{max_pixels} pixels allowed (setting img_max_pixels)")
        image.load()
    except Image.DecompressionBombError as exc:
        raise field_error(field, f"image has too many pixels ({exc}; setting img_max_pixels)") from None
    except UnidentifiedImageError:
        raise field_error(field, "the decoded data is not an image in a format this server reads "
                                 "(PNG, JPEG, WebP, ...)") from None
    except OSError as exc:
        raise field_error(field, f"the image is damaged or truncated ({exc})") from None
    except ApiError:
        raise
    except Exception as exc:  # Pillow's decoders raise assorted types on hostile input; all are the client's fault
        raise field_error(field, f"the image could not be decoded ({type(exc).__name__}: {exc})") from None
    return image


def image_format(samples_format: str) -> str:
    return _FORMATS.get(str(samples_format).lower(), "PNG")


def encode_image(image: Image.Image, samples_format: str = "png", infotext: str | None = None) -> str:
    """PIL → base64 in the output format, keeping the infotext (PNG text chunks / EXIF UserComment)."""
    fmt = image_format(samples_format)
    buffer = io.BytesIO()
    if fmt == "PNG":
        info = infotext_mod.png_info(None)
        texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
        if infotext is not None:
            texts["parameters"] = infotext
        for key, value in texts.items():
            info.add_text(key, value)
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        text = infotext if infotext is not None else image.info.get("parameters")
        extra = {"exif": infotext_mod.exif_with_user_comment(text)} if isinstance(text, str) else {}
        image.save(buffer, format=fmt, quality=95, **extra)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_data_uri(image: Image.Image, fmt: str = "png") -> str:
    return f"data:image/{fmt};base64,{encode_image(image, fmt)}"
