"""Untrusted bytes in, a decoded RGB image out, or a precise refusal.

Three checks, in this order, each before the next costs anything: the type is sniffed from magic bytes
(never the filename or Content-Type), the pixel count is read from the header before any pixel is decoded
(decompression bombs), and decoding is strict (Pillow's LOAD_TRUNCATED_IMAGES stays False, so a
truncated file is an error, not a grey half-image the detector would score).
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

from PIL import Image

from .errors import BadRequest, CorruptImage, ImageTooLarge, UnsupportedMediaType

ImageFormat = Literal["jpeg", "png", "webp", "gif"]
_PIL_FORMAT: dict[ImageFormat, str] = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}


def sniff(data: bytes) -> ImageFormat:
    """The image type from its first bytes; 415 for anything else."""
    if not data:
        raise BadRequest("empty image")
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise UnsupportedMediaType("unsupported image type: expected JPEG, PNG, WebP or GIF")


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only (Pillow opens lazily) and refuse images with too many pixels."""
    fmt = sniff(data)
    try:
        with warnings.catch_warnings():
            # Our own limit is the one that counts; Pillow's global warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]])
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has too many pixels (limit {max_pixels}): refused before decoding") \
            from exc
    except Exception as exc:  # Pillow raises many types for a damaged header
        raise CorruptImage(f"cannot read {fmt.upper()} header: the file is damaged") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise CorruptImage("image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}: "
            "refused before decoding"
        )
    return img


def decode_rgb(
    img: Image.Image, draft_size: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Decode an opened image to RGB (the first frame of an animation).

    With `draft_size`, a JPEG is decoded reduced: libjpeg scales the DCT by 1/2, 1/4 or 1/8 while staying at
    or above that size, far cheaper than a full decode. Returns the image and the box in its coordinates that
    covers the whole original picture, so later geometry can be computed on the original size.
    """
    box = (0.0, 0.0, float(img.size[0]), float(img.size[1]))
    fmt = img.format or "image"
    try:
        if draft_size is not None and img.format == "JPEG":
            drafted = img.draft("RGB", draft_size)
            if drafted is not None:
                box = tuple(float(v) for v in drafted[1])  # type: ignore[assignment]
        img.seek(0)  # GIF/WebP animations: the first frame
        img.load()
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    except Exception as exc:  # truncated data raises OSError; damaged streams raise others
        raise CorruptImage(f"cannot decode {fmt}: the file is truncated or damaged") from exc
    return rgb, box
