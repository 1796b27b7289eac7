"""Image decoding: a file or an in-memory image -> 8-bit RGB, upright, as the weights expect.

* EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo is upright.
* 16-bit images (PIL modes ``I;16*``, and ``I``, which is how 16-bit files decode) are scaled
  to 8 bits (``round(v / 257)``, so 65535 -> 255), never clipped; ``I`` beyond 16 bits is
  refused. 32-bit float images (mode ``F``) are scaled by their range: 0..1 x 255, 0..255
  as they are, 0..65535 / 257; other ranges, and ``LAB``, are refused by name.
* A JPEG much larger than needed (at least 4x) is decoded at 1/4 or 1/8 scale by libjpeg's
  DCT scaling (``PIL.Image.draft``): only where that scale divides both sides (so the
  reduced image covers exactly the same area) and the shorter side stays >= ``min_side``,
  so the reduced image is never smaller than the resize that follows. Not at 1/2: there
  the decode saving is small beside the forward pass, and a drafted view moved ``pool``
  features as far as a one-pixel shift (docs/backbones.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
REFUSED_MODES = {"LAB": "CIELAB, which convert('RGB') copies channel by channel"}
DRAFT_SCALES = (8, 4)
Source = Image.Image | str | os.PathLike


def draft_scale(size: tuple[int, int], min_side: int) -> int:
    """The largest JPEG DCT scale (8 or 4, else 1) dividing both sides, short side >= min_side."""
    w, h = size
    for s in DRAFT_SCALES:
        if w % s == 0 and h % s == 0 and min(w, h) // s >= min_side:
            return s
    return 1


def decode(source: Source, min_side: int | None = None) -> Image.Image:
    """An RGB image, upright; a JPEG file is decoded reduced where ``min_side`` allows."""
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    with Image.open(Path(source)) as im:
        if min_side and im.format == "JPEG":
            s = draft_scale(im.size, min_side)
            if s > 1:
                im.draft(im.mode, (im.width // s, im.height // s))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit grey scaled to 8 bits rather than clipped by ``convert``; 32-bit
    float grey (mode ``F``) by its value range (:func:`float_scale`). Modes ``convert``
    mangles (``LAB``, ``I`` beyond 16 bits, non-finite or out-of-range ``F``) raise
    ``ValueError`` naming the mode, never decode black."""
    if im.mode in REFUSED_MODES:
        raise ValueError(f"mode {im.mode} ({REFUSED_MODES[im.mode]}): convert it to RGB first")
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "F":
        wide = np.asarray(im).astype(np.float64)
        low, high = (float(wide.min()), float(wide.max())) if wide.size else (0.0, 0.0)
        scale = float_scale(low, high) if im.mode == "F" else 257.0
        if low < 0 or high > 65535:
            raise ValueError(f"mode {im.mode} with values {low:g}..{high:g}, beyond 16 bits: "
                             "convert it to 8- or 16-bit first")
        im = Image.fromarray(np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8))
    return im if im.mode == "RGB" else im.convert("RGB")


def float_scale(low: float, high: float) -> float:
    """Divisor taking a float image's values to 0..255: values in 0..1 are fractions (x 255),
    in 0..255 8-bit levels (x 1), in 0..65535 16-bit levels (/ 257); else ``ValueError``."""
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 65535:
        raise ValueError(f"mode F with values {low:g}..{high:g}: not 0..1, 0..255 or 0..65535; "
                         "convert it to 8- or 16-bit first")
    return 1 / 255 if high <= 1 else 1.0 if high <= 255 else 257.0
