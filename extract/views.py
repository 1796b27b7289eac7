"""Views: the full image resized, five crops (4 corners + centre), or those ten with mirrors.

Views are made as uint8 tensors (cheap to batch, pin and copy); normalisation to the
backbone's mean/std happens on the device in :func:`normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

TEN_CROP_NAMES = (
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
)
VIEW_NAMES = {1: ("full",), 5: TEN_CROP_NAMES[:5], 10: TEN_CROP_NAMES}
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def view_names(views: int) -> tuple[str, ...]:
    return VIEW_NAMES[views]


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class MakeViews:
    """PIL image -> uint8 tensor [V, 3, size, size] (picklable for DataLoader workers).

    One view: the whole image resized to ``size`` x ``size``. Five views: resized to
    ``size / crop_pct``, then the four corners and the centre of ``size``. Ten: those
    five and their mirrors (mirrors suit photographs, not digits or text).
    """

    def __init__(self, size: int, views: int, interpolation: str, crop_pct: float) -> None:
        if views not in VIEW_NAMES:
            raise ValueError(f"views must be one of {sorted(VIEW_NAMES)}, got {views}")
        self.size, self.views, self.crop_pct = size, views, crop_pct
        self.resample = _RESAMPLE[interpolation]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        s = self.size
        if self.views == 1:
            return _to_tensor(img.resize((s, s), self.resample)).unsqueeze(0)
        big = round(s / self.crop_pct)
        img = img.resize((big, big), self.resample)
        c = (big - s) // 2
        boxes = [(0, 0), (big - s, 0), (0, big - s), (big - s, big - s), (c, c)]
        crops = [_to_tensor(img.crop((x, y, x + s, y + s))) for x, y in boxes]
        mirrors = [t.flip(-1) for t in crops] if self.views == 10 else []
        return torch.stack(crops + mirrors)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float, scaled to [0, 1] and standardised per channel."""
    m = torch.tensor(mean, device=batch.device).view(3, 1, 1) * 255.0
    s = torch.tensor(std, device=batch.device).view(3, 1, 1) * 255.0
    return (batch.float() - m) / s


@dataclass(frozen=True)
class Preprocess:
    """How a backbone's weights want their input: size, resize rule, normalisation."""

    crop_size: int
    interpolation: str
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> dict:
        return {"rule": "squash-1/resize-crop-5-10", **asdict(self)}

    def views(self, n: int) -> MakeViews:
        return MakeViews(self.crop_size, n, self.interpolation, self.crop_pct)
