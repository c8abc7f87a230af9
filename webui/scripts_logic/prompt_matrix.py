"""Prompt matrix: `base | a | b | c` makes one prompt per subset of the optional parts (2^(n-1) prompts).

Combination number k includes part i (counting the parts after the first from 0) when bit i of k is set,
as A1111 does. In the grid, the first half of the parts vary along the columns (low bits) and the rest
down the rows; each header lists every part, grey and struck through where the part is off.
"""
from __future__ import annotations

import math
from typing import Sequence

from PIL import Image

from ..engine import grids

DELIMITERS = {"comma": ", ", "space": " "}


def split_parts(prompt: str) -> list[str]:
    return prompt.split("|")


def combinations(prompt: str, put_at_start: bool = False, delimiter: str = "comma") -> list[str]:
    """Every prompt of the matrix, in combination order; the base part first (or last with put_at_start)."""
    if delimiter not in DELIMITERS:
        raise ValueError(f"joining char must be one of {', '.join(DELIMITERS)} (got {delimiter!r})")
    parts = split_parts(prompt)
    joiner = DELIMITERS[delimiter]
    prompts = []
    for k in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for n, text in enumerate(parts[1:]) if k & (1 << n)]
        ordered = chosen + [parts[0]] if put_at_start else [parts[0]] + chosen
        prompts.append(joiner.join(ordered))
    return prompts


def grid_shape(prompt: str) -> tuple[int, int]:
    """(rows, cols) of the matrix grid."""
    optional = len(split_parts(prompt)) - 1
    rows = 1 << (optional // 2)
    return rows, (2 ** optional) // rows


def headers(prompt: str) -> tuple[list[list[grids.Label]], list[list[grids.Label]]]:
    """(column headers, row headers): per column/row, every part of that half, marked on or off."""
    parts = [p.strip() for p in split_parts(prompt)[1:]]
    boundary = math.ceil(len(parts) / 2)
    horiz, vert = parts[:boundary], parts[boundary:]
    cols = [[grids.Label(x, active=bool(pos & (1 << i))) for i, x in enumerate(horiz)] for pos in range(1 << len(horiz))]
    rows = [[grids.Label(x, active=bool(pos & (1 << i))) for i, x in enumerate(vert)] for pos in range(1 << len(vert))]
    return cols, rows


def draw_matrix(images: Sequence[Image.Image], prompt: str, margin: int = 0) -> Image.Image:
    """The labelled grid of the matrix images (in combination order)."""
    rows, cols = grid_shape(prompt)
    if len(images) < rows * cols:
        raise ValueError(f"the matrix needs {rows * cols} images, got {len(images)}")
    cells = [list(images[r * cols:(r + 1) * cols]) for r in range(rows)]
    col_headers, row_headers = headers(prompt)
    return grids.annotated_grid(cells, col_labels=col_headers, row_labels=row_headers, margin=margin)
