"""Untrusted image bytes: sniffing, every accepted format, truncation, wrong types, decompression bombs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage
from deepdetect_server.errors import CorruptImage, ImageTooLarge, UnsupportedMediaType
from deepdetect_server.media import decode_rgb, open_image, sniff
from PIL import Image, ImageFile
from server_helpers import encode

pytestmark = pytest.mark.timeout(60)

GIF = Path(skimage.__file__).parent / "data" / "no_time_for_that_tiny.gif"
LIMIT = 40_000_000


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize(("fmt", "kw", "name"), [
    ("JPEG", {"quality": 95}, "jpeg"),
    ("PNG", {}, "png"),
    ("WEBP", {"lossless": True}, "webp"),
    ("GIF", {}, "gif"),
])
def test_each_format_decodes_to_rgb(
    photo_arrays: dict[str, np.ndarray], fmt: str, kw: dict, name: str
) -> None:
    arr = photo_arrays["coffee"]
    data = encode(arr, fmt, **kw)
    assert sniff(data) == name
    rgb, box = decode_rgb(open_image(data, LIMIT))
    assert rgb.mode == "RGB" and rgb.size == (arr.shape[1], arr.shape[0])
    assert box == (0.0, 0.0, arr.shape[1], arr.shape[0])
    if fmt in ("PNG", "WEBP"):  # lossless: exact pixels
        assert np.array_equal(np.asarray(rgb), arr)


def test_animated_gif_gives_its_first_frame() -> None:
    data = GIF.read_bytes()
    with Image.open(GIF) as ref:
        assert getattr(ref, "n_frames", 1) > 1
        first = np.asarray(ref.convert("RGB"))
        ref.seek(1)
        second = np.asarray(ref.convert("RGB"))
    rgb, _ = decode_rgb(open_image(data, LIMIT))
    assert np.array_equal(np.asarray(rgb), first)
    assert not np.array_equal(first, second)


def test_grayscale_and_alpha_become_rgb(photo_arrays: dict[str, np.ndarray]) -> None:
    gray = encode(photo_arrays["astronaut"][..., 0], "PNG")
    rgba = encode(np.dstack([photo_arrays["astronaut"], np.full((512, 512), 128, np.uint8)]), "PNG")
    for data in (gray, rgba):
        assert decode_rgb(open_image(data, LIMIT))[0].mode == "RGB"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_image_is_corrupt(photo_arrays: dict[str, np.ndarray], fmt: str) -> None:
    data = encode(photo_arrays["chelsea"], fmt)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(CorruptImage):
        decode_rgb(open_image(data[: len(data) // 2], LIMIT))


def test_damaged_header_is_corrupt() -> None:
    with pytest.raises(CorruptImage):
        open_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, LIMIT)


@pytest.mark.parametrize("data", [
    b"BM" + b"\0" * 100,  # BMP: a real image type we do not accept
    b"%PDF-1.7\n...",
    b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    b"hello world",
])
def test_other_types_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        sniff(data)


def test_bmp_file_is_refused_even_if_pillow_could_read_it(photo_arrays: dict[str, np.ndarray]) -> None:
    with pytest.raises(UnsupportedMediaType):
        open_image(encode(photo_arrays["coffee"], "BMP"), LIMIT)


def test_bomb_is_refused_from_the_header_before_decoding() -> None:
    data = png_header_only(12_000, 12_000)  # 144 Mpx declared, 100 bytes sent
    with pytest.raises(ImageTooLarge, match="12000x12000 = 144000000 pixels, over the limit"):
        open_image(data, LIMIT)


def test_pixel_limit_is_a_setting(photo_arrays: dict[str, np.ndarray]) -> None:
    data = encode(photo_arrays["coffee"], "JPEG")  # 600 x 400
    open_image(data, 240_000)
    with pytest.raises(ImageTooLarge):
        open_image(data, 239_999)


def test_pillow_own_bomb_error_maps_to_image_too_large() -> None:
    # Beyond 2x Pillow's global MAX_IMAGE_PIXELS, Pillow raises before we look: same answer.
    data = png_header_only(30_000, 30_000)
    with pytest.raises(ImageTooLarge, match="refused before decoding"):
        open_image(data, 10**12)


def test_reading_is_not_fooled_by_a_filename_or_extension() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    assert sniff(buf.getvalue()) == "png"
