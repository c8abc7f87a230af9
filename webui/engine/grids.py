"""Image grids with A1111-style labels: column labels on top, row labels on the left, wrapped to fit.

Used by the X/Y/Z plot and the prompt matrix. A label is a string, or a list of `Label`s for several
annotations in one header (the prompt matrix marks the parts that are off as grey and struck through).
A Z axis is drawn as a row of labelled sub-grids, each with a title above it (`grid_of_grids`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

from PIL import Image, ImageDraw, ImageFont

ACTIVE_COLOR = (0, 0, 0)
INACTIVE_COLOR = (153, 153, 153)
BACKGROUND = "white"
MIN_FONT_SIZE = 10


@dataclass(frozen=True)
class Label:
    text: str
    active: bool = True


LabelLike = Union[str, Label, Sequence[Label]]


@dataclass(frozen=True)
class _Line:
    text: str
    active: bool


def as_labels(value: LabelLike | None) -> list[Label]:
    if value is None:
        return []
    if isinstance(value, Label):
        return [value]
    if isinstance(value, str):
        return [Label(value)] if value else []
    return [v if isinstance(v, Label) else Label(str(v)) for v in value]


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font; no font files are looked up or downloaded."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def font_size_for(cell_w: int, cell_h: int) -> int:
    return max(MIN_FONT_SIZE, (cell_w + cell_h) // 25)


# ---- plain grids ---------------------------------------------------------------------------------

def cell_size(images: Sequence[Image.Image | None]) -> tuple[int, int]:
    present = [im for im in images if im is not None]
    if not present:
        return 64, 64
    return max(im.width for im in present), max(im.height for im in present)


def image_grid(images: Sequence[Image.Image | None], cols: int | None = None, margin: int = 0,
               background: str | tuple = "black") -> Image.Image:
    """Images left to right, top to bottom; `cols` defaults to a near-square layout. None leaves a gap."""
    if not images:
        raise ValueError("a grid needs at least one image")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    return paste_cells([list(images[r * cols:(r + 1) * cols]) for r in range(rows)], margin, background)


def paste_cells(cells: Sequence[Sequence[Image.Image | None]], margin: int,
                 background: str | tuple) -> Image.Image:
    cw, ch = cell_size([im for row in cells for im in row])
    rows, cols = len(cells), max(len(row) for row in cells)
    grid = Image.new("RGB", (cols * cw + (cols - 1) * margin, rows * ch + (rows - 1) * margin), background)
    for r, row in enumerate(cells):
        for c, im in enumerate(row):
            if im is None:
                continue
            # smaller images sit centred in their cell
            x = c * (cw + margin) + (cw - im.width) // 2
            y = r * (ch + margin) + (ch - im.height) // 2
            grid.paste(im.convert("RGB"), (x, y))
    return grid


# ---- text ----------------------------------------------------------------------------------------

def _text_width(draw: ImageDraw.ImageDraw, text: str, fnt) -> int:
    return int(math.ceil(draw.textlength(text, font=fnt)))


def wrap_text(draw: ImageDraw.ImageDraw, text: str, fnt, max_width: int) -> list[str]:
    """Greedy word wrap to `max_width` pixels; a word longer than a line is split between characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if _text_width(draw, candidate, fnt) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for ch in word:
                if line and _text_width(draw, line + ch, fnt) > max_width:
                    lines.append(line)
                    line = ""
                line += ch
        lines.append(line)
    return lines


def _wrapped(draw, labels: list[Label], fnt, max_width: int) -> list[_Line]:
    return [_Line(text, label.active) for label in labels for text in wrap_text(draw, label.text, fnt, max_width)]


def _line_height(fnt) -> int:
    ascent, descent = fnt.getmetrics() if hasattr(fnt, "getmetrics") else (10, 2)
    return ascent + descent


def _block_height(lines: list[_Line], fnt, spacing: int) -> int:
    return len(lines) * _line_height(fnt) + max(0, len(lines) - 1) * spacing


def _draw_block(draw, lines: list[_Line], fnt, center_x: int, center_y: int, spacing: int) -> None:
    lh = _line_height(fnt)
    y = center_y - _block_height(lines, fnt, spacing) // 2
    for line in lines:
        w = _text_width(draw, line.text, fnt)
        x = center_x - w // 2
        color = ACTIVE_COLOR if line.active else INACTIVE_COLOR
        draw.text((x, y), line.text, font=fnt, fill=color)
        if not line.active:   # struck through, as A1111 marks a prompt-matrix part that is off
            draw.line((x, y + lh // 2, x + w, y + lh // 2), fill=color, width=max(1, lh // 12))
        y += lh + spacing


# ---- labelled grids ------------------------------------------------------------------------------

def annotated_grid(cells: Sequence[Sequence[Image.Image | None]], col_labels: Sequence[LabelLike] = (),
                   row_labels: Sequence[LabelLike] = (), margin: int = 0, font_size: int | None = None,
                   background: str | tuple = BACKGROUND) -> Image.Image:
    """A rows × cols grid with column labels above and row labels to the left (either may be empty)."""
    if not cells or not any(cells):
        raise ValueError("a grid needs at least one image")
    grid = paste_cells(cells, margin, background)
    rows, cols = len(cells), max(len(row) for row in cells)
    cw, ch = cell_size([im for row in cells for im in row])
    return annotate(grid, cw, ch, rows, cols, col_labels, row_labels, margin, font_size, background)


def annotate(grid: Image.Image, cell_w: int, cell_h: int, rows: int, cols: int,
             col_labels: Sequence[LabelLike], row_labels: Sequence[LabelLike], margin: int = 0,
             font_size: int | None = None, background: str | tuple = BACKGROUND) -> Image.Image:
    """Add label bands above and left of an existing grid of `rows` × `cols` cells."""
    cols_l = [as_labels(v) for v in col_labels] + [[]] * max(0, cols - len(col_labels))
    rows_l = [as_labels(v) for v in row_labels] + [[]] * max(0, rows - len(row_labels))
    fnt = font(font_size or font_size_for(cell_w, cell_h))
    spacing = max(1, (font_size or font_size_for(cell_w, cell_h)) // 2)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad_left = max(cell_w * 3 // 4, 64) if any(rows_l) else 0
    col_lines = [_wrapped(measure, labels, fnt, cell_w) for labels in cols_l]
    row_lines = [_wrapped(measure, labels, fnt, max(1, pad_left - 8)) for labels in rows_l]
    pad_top = max((_block_height(ls, fnt, spacing) for ls in col_lines if ls), default=0)
    pad_top = pad_top + 2 * spacing if pad_top else 0
    out = Image.new("RGB", (grid.width + pad_left, grid.height + pad_top), background)
    out.paste(grid, (pad_left, pad_top))
    draw = ImageDraw.Draw(out)
    for c, lines in enumerate(col_lines[:cols]):
        _draw_block(draw, lines, fnt, pad_left + c * (cell_w + margin) + cell_w // 2, pad_top // 2, spacing)
    for r, lines in enumerate(row_lines[:rows]):
        _draw_block(draw, lines, fnt, pad_left // 2, pad_top + r * (cell_h + margin) + cell_h // 2, spacing)
    return out


def grid_of_grids(grids: Sequence[Image.Image], titles: Sequence[LabelLike], margin: int = 0,
                  font_size: int | None = None, background: str | tuple = BACKGROUND) -> Image.Image:
    """Sub-grids side by side (a Z axis), each with its title above it."""
    if not grids:
        raise ValueError("no sub-grids")
    size = font_size or font_size_for(min(g.width for g in grids) // 2, min(g.height for g in grids) // 2)
    return annotated_grid([list(grids)], col_labels=titles, margin=margin, font_size=size, background=background)


def label_band_heights(image: Image.Image, cell_w: int, cell_h: int, rows: int, cols: int,
                       margin: int = 0) -> tuple[int, int]:
    """(pad_left, pad_top) of a grid made by `annotated_grid` with these cells: how much the labels added."""
    return image.width - (cols * cell_w + (cols - 1) * margin), image.height - (rows * cell_h + (rows - 1) * margin)
