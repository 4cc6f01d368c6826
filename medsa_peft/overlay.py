"""Overlay pictures, for `Prediction.overlay` (`medsa-peft predict --overlay`) and the training demo's `overlay.png`.

Masks are tinted and outlined in a colour per class (`class_colour`) over a grey or colour image; volumes are shown
as axial slices in radiological view (`radiological`); `figure` puts captioned panels side by side above a legend
that names the classes (`legend`, PIL's default font).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = [
    "busiest_slice",
    "class_colour",
    "figure",
    "legend",
    "overlay",
    "radiological",
]

RGB = tuple[int, int, int]

GOLDEN_RATIO_CONJUGATE = 0.6180339887498949  # hue step: any run of consecutive classes gets well-spread hues
FONT_SIZE = 14
MARGIN = 8  # pixels around panels, captions and legend entries
SWATCH = 12  # side of a legend's colour square
BACKGROUND = (0, 0, 0)
TEXT = (255, 255, 255)


def class_colour(index: int) -> RGB:
    """The RGB colour of class `index` (0, 1, ...): saturated hues a golden-ratio turn apart, class 0 red."""
    red, green, blue = colorsys.hsv_to_rgb((index * GOLDEN_RATIO_CONJUGATE) % 1.0, 0.85, 1.0)
    return round(red * 255), round(green * 255), round(blue * 255)


def radiological(axial_slice: np.ndarray) -> np.ndarray:
    """An axial slice (x, y) or (x, y, 3) of a volume in canonical (RAS+) voxel order -> its picture (y, x) or
    (y, x, 3) in radiological view: anterior up, the patient's right on the left.

    Canonical rows run to the patient's right and columns to anterior, so both are reversed and swapped.
    """
    return np.swapaxes(np.asarray(axial_slice)[::-1, ::-1], 0, 1)


def overlay(image: np.ndarray, masks: Sequence[tuple[np.ndarray, RGB]], alpha: float = 0.35) -> Image.Image:
    """`image` (H, W) or (H, W, 3) in [0, 1] with each (mask (H, W) bool, RGB colour) tinted and outlined, in order."""
    rgb = np.clip(image, 0.0, 1.0)
    rgb = np.repeat(rgb[..., None], 3, axis=-1) if rgb.ndim == 2 else rgb[..., :3]
    rgb = (rgb * 255.0).astype(np.float32)
    for mask, colour in masks:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask of shape {mask.shape} does not match the image {rgb.shape[:2]}")
        colour = np.asarray(colour, dtype=np.float32)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
        rgb[mask & ~ndimage.binary_erosion(mask)] = colour
    return Image.fromarray(rgb.round().astype(np.uint8))


def busiest_slice(mask: np.ndarray) -> int:
    """The index along the last axis of `mask` (H, W, D) with the most foreground; the middle slice if it is empty."""
    areas = np.asarray(mask).reshape(-1, mask.shape[-1]).sum(axis=0)
    return int(np.argmax(areas)) if areas.any() else mask.shape[-1] // 2


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font: its scalable version at `FONT_SIZE` where PIL has FreeType, its bitmap font otherwise."""
    return ImageFont.load_default(size=FONT_SIZE)


def _line_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return max(ascent + descent, SWATCH)


def legend(entries: Sequence[tuple[str, RGB]], width: int) -> Image.Image:
    """A strip `width` pixels wide naming each (name, RGB colour) entry after a square of its colour, entries left to
    right in rows that fit the width (an entry wider than the strip gets a row of its own and is cut)."""
    font = _font()
    line = _line_height(font)
    rows: list[list[tuple[str, RGB, int]]] = [[]]
    used = MARGIN
    for name, colour in entries:
        entry_width = SWATCH + MARGIN // 2 + int(np.ceil(font.getlength(name))) + MARGIN
        if rows[-1] and used + entry_width > width:
            rows.append([])
            used = MARGIN
        rows[-1].append((name, colour, used))
        used += entry_width
    strip = Image.new("RGB", (width, MARGIN + len(rows) * (line + MARGIN // 2)), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for number, row in enumerate(rows):
        top = MARGIN + number * (line + MARGIN // 2)
        for name, colour, left in row:
            swatch_top = top + (line - SWATCH) // 2
            draw.rectangle((left, swatch_top, left + SWATCH - 1, swatch_top + SWATCH - 1), fill=colour)
            draw.text((left + SWATCH + MARGIN // 2, top), name, fill=TEXT, font=font)
    return strip


def figure(
    panels: Sequence[tuple[str, Image.Image]], entries: Sequence[tuple[str, RGB]], min_size: int = 0
) -> Image.Image:
    """Panels of one size side by side, each with its caption above it, over the `legend` of `entries`.

    Panels are enlarged by a whole factor (nearest neighbour, so pixels stay sharp) until their long side reaches
    `min_size`.
    """
    sizes = {panel.size for _, panel in panels}
    if len(sizes) != 1:
        raise ValueError(f"figure panels must share one size, got {sorted(sizes)}")
    (width, height), = sizes
    zoom = max(1, -(-min_size // max(width, height)))
    width, height = width * zoom, height * zoom
    font = _font()
    caption = _line_height(font) + MARGIN // 2
    total_width = MARGIN + len(panels) * (width + MARGIN)
    strip = legend(entries, total_width)
    picture = Image.new("RGB", (total_width, MARGIN + caption + height + strip.height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    for number, (title, panel) in enumerate(panels):
        left = MARGIN + number * (width + MARGIN)
        draw.text((left, MARGIN), title, fill=TEXT, font=font)
        picture.paste(panel.resize((width, height), Image.NEAREST), (left, MARGIN + caption))
    picture.paste(strip, (0, MARGIN + caption + height))
    return picture
