"""Preprocessing as the weights define it: resize, centre crop, views; normalisation on the device.

One geometry for every backbone, with the numbers taken from the weights' own definition
(torchvision's ``weights.transforms()``, timm's ``resolve_data_config``): the image is
resized (shorter side to ``resize_size``, or both sides for timm's ``squash`` mode) with
PIL's antialiased filter, then cropped. One view is the centre crop; five are torchvision's
``five_crop`` of the same resized image (four corners and the centre), so the centre of five
or ten views is the one-view image pixel for pixel; ten add the five mirrored.

The geometry calls torchvision's own functions (``resize``, ``center_crop``, ``five_crop``)
on PIL images, exactly as ``weights.transforms()`` and timm's eval transform do; a test
checks the pixels against both libraries on a real photo. One shortcut gives the same
pixels: where Pillow would compute the centre crop's pixels from exactly the same filter
positions whether it resizes the whole image or only the crop's region
(:func:`crop_box`), the centre view is resampled straight from that region (CIFAR-10's
32 px at 112: 0.11 -> 0.08 ms an image; an image already at the resize size is cropped).

Views are uint8, channels last (``[V, S, S, 3]`` in memory, as PIL holds pixels: written
straight into the batch with no transposing copy; as tensors ``[V, 3, S, S]`` in torch's
``channels_last`` layout); :func:`normalize` (or the :class:`Normalize` layer in front of
the model) scales them on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from featcache.errors import UsageError
from featcache.extract.data.images import Source, decode

PREPROCESS_VERSION = 1
RESIZE_MODES = ("shorter_side", "squash")
MAX_RESIZED_PIXELS = 2**26  # 192 MiB of RGB after the resize; a longer image is refused
VIEW_NAMES = {
    1: ("centre",),
    5: ("top_left", "top_right", "bottom_left", "bottom_right", "centre"),
    10: (
        "top_left",
        "top_right",
        "bottom_left",
        "bottom_right",
        "centre",
        "top_left_flip",
        "top_right_flip",
        "bottom_left_flip",
        "bottom_right_flip",
        "centre_flip",
    ),
}
TEN_CROP_NAMES = VIEW_NAMES[10]


def view_names(views: int) -> tuple[str, ...]:
    return VIEW_NAMES[views]


def resize_for(crop_size: int, crop_pct: Fraction) -> int:
    """The one rule for the resize before the crop: ``floor(crop_size / crop_pct)`` (timm's)."""
    return math.floor(crop_size / crop_pct)


@dataclass(frozen=True)
class Preprocess:
    """Everything that turns a file into the pixels a backbone sees, except normalisation.

    ``source`` names where the numbers come from; ``jpeg_draft`` lets a large JPEG decode
    at a reduced scale (never below ``resize_size``; see :mod:`featcache.extract.data.images`).
    """

    crop_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    resize_mode: str = "shorter_side"
    jpeg_draft: bool = True

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise UsageError(
                f"resize mode {self.resize_mode!r} is not supported; valid: "
                f"{', '.join(RESIZE_MODES)}"
            )
        if not 0 < self.crop_size <= self.resize_size:
            raise UsageError(
                f"crop {self.crop_size} px must be positive and at most the resize "
                f"{self.resize_size} px"
            )
        InterpolationMode(self.interpolation)

    def describe(self) -> dict[str, Any]:
        """JSON-able: everything that changes the pixels (it enters the cache key)."""
        return {
            **asdict(self),
            "mean": list(self.mean),
            "std": list(self.std),
            "antialias": True,
            "decode": "RGB, EXIF orientation, 16-bit / 257",
            "views": "centre crop | five_crop of the resized image | five_crop + mirrors",
            "version": PREPROCESS_VERSION,
        }

    def views(self, n_views: int) -> MakeViews:
        """A picklable callable: source (path or PIL image) -> uint8 ``[n_views, 3, S, S]``."""
        return MakeViews(self, n_views)

    def resized(self, source: Source) -> Image.Image:
        """The decoded image resized as the weights define it, before any crop."""
        return self._resize(self._decode(source))

    def centre(self, source: Source) -> Image.Image:
        """The centre crop of :meth:`resized`, straight from the crop's region where exact."""
        img = self._decode(source)
        w, h = img.size
        new_w, new_h = self.resized_size(w, h)
        resample = TF.pil_modes_mapping[InterpolationMode(self.interpolation)]
        box = crop_box((w, h), (new_w, new_h), self.crop_size, resample)
        if box is None:
            return TF.center_crop(self._resize(img), [self.crop_size, self.crop_size])
        return img.resize((self.crop_size, self.crop_size), resample, box=box)

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after the resize: torchvision's rule (a test checks it).

        ``ValueError`` where that would exceed ``MAX_RESIZED_PIXELS`` (a 100,000 x 1 image at
        224 px: 15 GiB), before anything is allocated."""
        if self.resize_mode == "squash":
            return self.resize_size, self.resize_size
        short, long = sorted((w, h))
        long = int(self.resize_size * long / short)
        if long * self.resize_size > MAX_RESIZED_PIXELS:
            raise ValueError(
                f"a {w} x {h} image resizes to {long:,} x {self.resize_size} before its crop "
                f"({3 * long * self.resize_size / 2**30:.1f} GiB): crop it to a less extreme "
                "shape or remove it")
        return (self.resize_size, long) if w <= h else (long, self.resize_size)

    def _decode(self, source: Source) -> Image.Image:
        return decode(source, self.resize_size if self.jpeg_draft else None)

    def _resize(self, img: Image.Image) -> Image.Image:
        self.resized_size(*img.size)
        size = [self.resize_size] * (2 if self.resize_mode == "squash" else 1)
        return TF.resize(img, size, InterpolationMode(self.interpolation), antialias=True)


class MakeViews:
    """Source -> uint8 tensor ``[V, 3, S, S]``: the centre crop, five crops, or ten."""

    def __init__(self, preprocess: Preprocess, n_views: int) -> None:
        if n_views not in VIEW_NAMES:
            raise UsageError(f"views must be one of {sorted(VIEW_NAMES)}, got {n_views}")
        self.preprocess, self.n_views = preprocess, n_views
        s = preprocess.crop_size
        self.shape = (n_views, s, s, 3)  # of :meth:`into`'s ``out``

    def __call__(self, source: Source) -> torch.Tensor:
        out = np.empty(self.shape, np.uint8)
        self.into(source, out)
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def into(self, source: Source, out: np.ndarray) -> None:
        """Writes the views into ``out``, uint8 ``[V, S, S, 3]`` (a slot of a batch)."""
        if self.n_views == 1:
            out[0] = np.asarray(self.preprocess.centre(source))
            return
        s = self.preprocess.crop_size
        for i, crop in enumerate(TF.five_crop(self.preprocess.resized(source), [s, s])):
            out[i] = np.asarray(crop)
        if self.n_views == 10:
            out[5:] = out[:5, :, ::-1]


@lru_cache(maxsize=4096)
def crop_box(size: tuple[int, int], resized: tuple[int, int], crop: int,
             resample: int) -> tuple[float, float, float, float] | None:
    """The region of an image of ``size`` that its centre ``crop`` covers once resized to
    ``resized``, where Pillow resampling only that region gives the very pixels of resizing
    the whole and cropping; else None.

    Pillow places each output pixel's filter at ``in0 + (i + 0.5) * scale`` with
    ``scale = (in1 - in0) / out`` (``precompute_coeffs`` in Resample.c; ``in0``, ``in1``
    are float32). Where the scale and the region's start are dyadic fractions exactly held
    in float32, every position is computed without rounding on both routes, so both
    resample with the same filters. Only where no side is longer than the crop: Pillow 13
    runs the vertical pass first where the image's height exceeds the output's by much
    more than its width does, so the routes (outputs ``resized`` and ``crop``) could take
    their passes in different orders and round differently. A side kept at its size is
    not resampled by the full resize: then both sides must be (the region is a plain
    crop). Each region found is checked once against the two routes on a random image.
    """
    kept = [n == m for n, m in zip(size, resized, strict=True)]
    if kept[0] != kept[1]:
        return None
    offsets = [round((m - crop) / 2.0) for m in resized]  # torchvision's: half to even
    box = []
    for n, m, offset in zip(size, resized, offsets, strict=True):
        scale = Fraction(n, m)
        lo = offset * scale
        if (n > crop and n != m) or not all(
                _exact_float32(v) for v in (scale, lo, lo + crop * scale)):
            return None
        box += [lo, lo + crop * scale]
    region = float(box[0]), float(box[2]), float(box[1]), float(box[3])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), np.uint8))
    whole = img.resize(resized, resample).crop((*offsets, offsets[0] + crop, offsets[1] + crop))
    same = np.array_equal(np.asarray(whole), np.asarray(img.resize((crop, crop), resample,
                                                                   box=region)))
    return region if same else None


def _exact_float32(v: Fraction) -> bool:
    """A dyadic fraction that float32 holds exactly (24-bit numerator)."""
    den = v.denominator
    return den & (den - 1) == 0 and abs(v.numerator) < 2**24


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float, scaled to [0, 1] and standardised per channel."""
    m = torch.tensor(mean, device=batch.device).view(3, 1, 1) * 255.0
    s = torch.tensor(std, device=batch.device).view(3, 1, 1) * 255.0
    return (batch.float() - m) / s


class Normalize(torch.nn.Module):
    """:func:`normalize` as the first layer of a model, so that a runtime compiling the model
    fuses it with the rest: in OpenVINO one pass over the pixels instead of torch's three
    (0.62 ms of a core an image at 224 px, an eighth of the forward pass, on the 2-core CPU)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(mean).view(3, 1, 1) * 255.0)
        self.register_buffer("scale", torch.tensor(std).view(3, 1, 1) * 255.0)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() - self.shift) / self.scale
