"""Preprocessing exactly as the model card declares it, in two implementations that must agree.

`reference_tensor` is timm's own eval transform (`create_transform(is_training=False)`) on a full decode:
the pixels the detector was trained on. `Preprocessor` is the serving path: it reproduces the same
geometry with plain Pillow calls and stops at uint8 HWC, so worker threads hand small arrays to the batcher
and normalisation happens once per batch (on the GPU when there is one). With `decode: reduced` it also asks
libjpeg for a DCT-scaled decode of at least twice the resize target; tests pin both paths to the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .checkpoint import ModelCard
from .media import decode_rgb, open_image

if TYPE_CHECKING:  # the video decode workers import this module: they must not pay for torch
    import torch

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Geometry:
    """Where an image of a given size ends up: resized to `size`, then placed at `offset` on the canvas.

    A negative offset crops, a positive one pads (timm's CenterCrop / CenterCropOrPad).
    """

    size: tuple[int, int]  # (w, h) after resize
    offset: tuple[int, int]  # (x, y) of the resized image's top-left on the square canvas


def plan(card: ModelCard, width: int, height: int) -> Geometry:
    """timm's eval geometry for crop ('center') and pad ('border') modes, as integers."""
    target = card.input_size
    scale = math.floor(target / card.crop_pct)
    if card.resize == "crop":
        # torchvision Resize(int): shorter side -> scale, longer side truncated.
        if width <= height:
            new_w, new_h = scale, int(scale * height / width)
        else:
            new_w, new_h = int(scale * width / height), scale
    else:
        # timm ResizeKeepRatio(longest=1): the longer side -> scale, rounded.
        ratio = max(width / scale, height / scale)
        new_w, new_h = round(width / ratio), round(height / ratio)
    return Geometry((new_w, new_h), (_place(new_w, target), _place(new_h, target)))


def _place(dim: int, target: int) -> int:
    if dim < target:
        return (target - dim) // 2  # pad: left/top gets the smaller half
    return -round((dim - target) / 2.0)  # crop: torchvision rounds half to even


def fill_colour(card: ModelCard) -> tuple[int, int, int]:
    """Pad colour: the mean, so padding normalises to zero (timm's CenterCropOrPad fill)."""
    r, g, b = (round(255 * v) for v in card.mean)
    return (r, g, b)


class Preprocessor:
    """bytes -> uint8 array (input_size, input_size, 3); runs in a worker thread, never on the event loop."""

    def __init__(self, card: ModelCard, max_pixels: int) -> None:
        self.card = card
        self.max_pixels = max_pixels
        self.resample = _RESAMPLE[card.interpolation]
        self.fill = fill_colour(card)

    def __call__(self, data: bytes) -> np.ndarray:
        img = open_image(data, self.max_pixels)
        geo = plan(self.card, *img.size)
        draft = None
        if self.card.decode == "reduced":
            draft = (2 * geo.size[0], 2 * geo.size[1])
        rgb, box = decode_rgb(img, draft)
        resized = rgb.resize(geo.size, self.resample, box=box)
        return self._place(np.asarray(resized), geo)

    def from_rgb(self, rgb: Image.Image) -> np.ndarray:
        """An already decoded RGB picture (a face crop, a video frame) -> the model's input array."""
        geo = plan(self.card, *rgb.size)
        return self._place(np.asarray(rgb.resize(geo.size, self.resample)), geo)

    def _place(self, arr: np.ndarray, geo: Geometry) -> np.ndarray:
        target = self.card.input_size
        if geo.offset[0] <= 0 and geo.offset[1] <= 0:
            x, y = -geo.offset[0], -geo.offset[1]
            return np.ascontiguousarray(arr[y : y + target, x : x + target])
        canvas = np.empty((target, target, 3), dtype=np.uint8)
        canvas[:] = self.fill
        src_x, dst_x, w = _span(geo.offset[0], arr.shape[1], target)
        src_y, dst_y, h = _span(geo.offset[1], arr.shape[0], target)
        canvas[dst_y : dst_y + h, dst_x : dst_x + w] = arr[src_y : src_y + h, src_x : src_x + w]
        return canvas


def _span(offset: int, dim: int, target: int) -> tuple[int, int, int]:
    """(source start, destination start, length) along one axis."""
    if offset >= 0:
        return 0, offset, min(dim, target - offset)
    return -offset, 0, target


def normalize_batch(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW, `(x / 255 - mean) / std`: ToTensor + Normalize, once per batch.

    The permute leaves the data in channels_last memory order, which is what CUDA convolutions want.
    """
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    return x.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))


def reference_transform(card: ModelCard):  # -> Callable[[Image.Image], torch.Tensor]
    """timm's eval transform for the card: the reference every faster path is tested against."""
    from timm.data import create_transform

    return create_transform(
        input_size=(3, card.input_size, card.input_size),
        is_training=False,
        interpolation=card.interpolation,
        mean=card.mean,
        std=card.std,
        crop_pct=card.crop_pct,
        crop_mode="center" if card.resize == "crop" else "border",
    )


def reference_tensor(card: ModelCard, data: bytes, max_pixels: int = 10**9) -> torch.Tensor:
    """Full decode + timm transform: float CHW, normalised."""
    rgb, _ = decode_rgb(open_image(data, max_pixels))
    return reference_transform(card)(rgb)
