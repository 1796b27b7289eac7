"""Preprocessing as the weights define it: resize, centre crop, views; normalisation on the device.

One geometry for every backbone, with the numbers taken from the weights' own definition
(torchvision's ``weights.transforms()``, timm's ``resolve_data_config``): the image is
resized (shorter side to ``resize_size``, or both sides for timm's ``squash`` mode) with
PIL's antialiased filter, then cropped. One view is the centre crop; five are torchvision's
``five_crop`` of the same resized image (four corners and the centre), so the centre of five
or ten views is the one-view image pixel for pixel; ten add the five mirrored.

The geometry calls torchvision's own functions (``resize``, ``center_crop``, ``five_crop``)
on PIL images, exactly as ``weights.transforms()`` and timm's eval transform do; a test
checks the pixels against both libraries on a real photo. Views are uint8 tensors (cheap
to batch, pin and copy); :func:`normalize` (or the :class:`Normalize` layer in front of the
model) scales them on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from .errors import UsageError
from .images import Source, decode

PREPROCESS_VERSION = 1
RESIZE_MODES = ("shorter_side", "squash")
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
    at a reduced scale (never below ``resize_size``; see :mod:`extract.images`).
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
        img = decode(source, self.resize_size if self.jpeg_draft else None)
        size = [self.resize_size] * (2 if self.resize_mode == "squash" else 1)
        return TF.resize(img, size, InterpolationMode(self.interpolation), antialias=True)


class MakeViews:
    """Source -> uint8 tensor ``[V, 3, S, S]``: the centre crop, five crops, or ten."""

    def __init__(self, preprocess: Preprocess, n_views: int) -> None:
        if n_views not in VIEW_NAMES:
            raise UsageError(f"views must be one of {sorted(VIEW_NAMES)}, got {n_views}")
        self.preprocess, self.n_views = preprocess, n_views

    def __call__(self, source: Source) -> torch.Tensor:
        img = self.preprocess.resized(source)
        s = self.preprocess.crop_size
        if self.n_views == 1:
            return _to_tensor(TF.center_crop(img, [s, s])).unsqueeze(0)
        crops = [_to_tensor(c) for c in TF.five_crop(img, [s, s])]
        mirrors = [t.flip(-1) for t in crops] if self.n_views == 10 else []
        return torch.stack(crops + mirrors)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


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
