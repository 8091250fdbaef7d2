"""Batched JPEG decode on the GPU with a CPU fallback, and the card's resize/crop/pad as tensor code.

nvJPEG (`torchvision.io.decode_jpeg(device="cuda")`) decodes baseline JPEGs in a batch far faster than
16 CPU cores, but it refuses or mis-decodes some files: progressive and arithmetic-coded JPEGs, CMYK/YCCK
(4 components), and anything it raises on. `gpu_decodable` reads the JPEG markers (cheap, no decode) and
sends those to the CPU path instead; a batch nvJPEG still refuses is retried image by image, and the ones
it refuses again go to Pillow as well. Nothing is lost and nothing is silently different: the resize is
checked against the CPU reference (`check_parity`) before the server may use it.

`resize_to_card` is the card's geometry (`preprocess.plan`) in torch ops: antialiased resize, then crop or
pad with the mean colour. It runs on any device, so its parity with Pillow is tested on CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checkpoint import ModelCard
from ..preprocess import fill_colour, plan

_SOF_BASELINE = {0xC0, 0xC1}  # baseline and extended sequential Huffman: what nvJPEG decodes
_SOF_OTHER = {0xC2: "progressive", 0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "progressive",
              0xC7: "lossless", 0xC9: "arithmetic", 0xCA: "arithmetic", 0xCB: "arithmetic",
              0xCD: "arithmetic", 0xCE: "arithmetic", 0xCF: "arithmetic"}
_TORCH_MODE = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


@dataclass(frozen=True)
class JpegInfo:
    sof: int
    components: int
    width: int
    height: int


def jpeg_info(data: bytes) -> JpegInfo | None:
    """The frame header of a JPEG (walking markers, no decode); None when it is not a readable JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 10 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return JpegInfo(marker, data[i + 9], width, height)
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid JPEG
            return None
        i += 2 + length
    return None


def gpu_decodable(data: bytes) -> tuple[bool, str]:
    """(True, "") when nvJPEG should decode these bytes, else (False, why the CPU path takes them)."""
    info = jpeg_info(data)
    if info is None:
        return False, "not a baseline JPEG"
    if info.sof not in _SOF_BASELINE:
        return False, _SOF_OTHER.get(info.sof, "unsupported JPEG coding")
    if info.components == 4:
        return False, "CMYK/YCCK"
    if info.components not in (1, 3):
        return False, f"{info.components} components"
    return True, ""


def resize_to_card(image: Any, card: ModelCard) -> Any:
    """uint8 HWC tensor (any device) -> uint8 (S, S, 3): the card's resize, then crop or pad."""
    import torch
    import torch.nn.functional as F

    h, w = int(image.shape[0]), int(image.shape[1])
    geo = plan(card, w, h)
    new_w, new_h = geo.size
    mode = _TORCH_MODE.get(card.interpolation, "bicubic")
    x = image.permute(2, 0, 1).unsqueeze(0).float()
    if (new_w, new_h) != (w, h):
        antialias = mode != "nearest"
        x = F.interpolate(x, size=(new_h, new_w), mode=mode, antialias=antialias,
                          align_corners=False if mode != "nearest" else None)
    x = x.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    size = card.input_size
    ox, oy = geo.offset
    if ox <= 0 and oy <= 0:
        return x[-oy : -oy + size, -ox : -ox + size].contiguous()
    canvas = torch.empty((size, size, 3), dtype=torch.uint8, device=x.device)
    canvas[:] = torch.tensor(fill_colour(card), dtype=torch.uint8, device=x.device)
    sx, dx, cw = _span(ox, new_w, size)
    sy, dy, ch = _span(oy, new_h, size)
    canvas[dy : dy + ch, dx : dx + cw] = x[sy : sy + ch, sx : sx + cw]
    return canvas


def _span(offset: int, dim: int, target: int) -> tuple[int, int, int]:
    if offset >= 0:
        return 0, offset, min(dim, target - offset)
    return -offset, 0, target


@dataclass(frozen=True)
class PreprocessParity:
    images: int
    max_abs: float
    mean_abs: float
    max_mean_abs_limit: float

    @property
    def ok(self) -> bool:
        return self.mean_abs <= self.max_mean_abs_limit

    def describe(self) -> str:
        return (f"GPU preprocessing vs the CPU reference on {self.images} images: mean |Δ| "
                f"{self.mean_abs:.3f} grey levels (limit {self.max_mean_abs_limit:g}), "
                f"max {self.max_abs:.0f}")


def check_parity(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                 max_mean_abs: float = 1.0) -> PreprocessParity:
    """Per-pixel agreement of two preprocessings of the same images (uint8 HWC each)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError("parity needs the same, non-zero number of images on both sides")
    diffs = [np.abs(np.asarray(r, np.int16) - np.asarray(c, np.int16)) for r, c in zip(reference, candidate,
                                                                                        strict=True)]
    return PreprocessParity(len(diffs), float(max(d.max() for d in diffs)),
                            float(np.mean([d.mean() for d in diffs])), max_mean_abs)


class GpuDecoder:
    """bytes -> card-sized uint8 tensors on the GPU; the CPU `fallback` takes what nvJPEG cannot."""

    def __init__(self, card: ModelCard, device: Any, fallback: Any) -> None:
        self.card = card
        self.device = device
        self.fallback = fallback  # Preprocessor: bytes -> uint8 HWC numpy
        self.fallbacks: dict[str, int] = {}

    def __call__(self, images: Sequence[bytes]) -> Any:
        """One uint8 NHWC batch on the device, in input order."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[Any] = [None] * len(images)
        gpu_idx = []
        limit = getattr(self.fallback, "max_pixels", None)
        for i, data in enumerate(images):
            ok, why = gpu_decodable(data)
            info = jpeg_info(data) if ok and limit else None
            if info is not None and limit is not None and info.width * info.height > limit:
                ok, why = False, "over the pixel limit"  # the CPU path refuses it with the usual 422
            if ok:
                gpu_idx.append(i)
            else:
                out[i] = self._cpu(data, why)
        if gpu_idx:
            encoded = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in gpu_idx]
            with warnings.catch_warnings():
                # torchvision 0.29 deprecates its codecs for TorchCodec; nvJPEG through it still works.
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = self._decode(encoded, decode_jpeg, ImageReadMode.RGB)
            for i, img in zip(gpu_idx, decoded, strict=True):
                if img is None:
                    out[i] = self._cpu(images[i], "refused by nvJPEG")
                else:
                    out[i] = resize_to_card(img.permute(1, 2, 0), self.card)
        return torch.stack(out)

    def _decode(self, encoded: list[Any], decode_jpeg: Any, mode: Any) -> list[Any]:
        try:
            return list(decode_jpeg(encoded, mode=mode, device=self.device))
        except RuntimeError:
            out = []
            for enc in encoded:  # one refused image must not send the whole batch to the CPU
                try:
                    out.append(decode_jpeg(enc, mode=mode, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def _cpu(self, data: bytes, why: str) -> Any:
        import torch

        self.fallbacks[why] = self.fallbacks.get(why, 0) + 1
        return torch.from_numpy(self.fallback(data)).to(self.device, non_blocking=True)
