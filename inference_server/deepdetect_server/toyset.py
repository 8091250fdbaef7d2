"""`deepdetect-server toyset`: a labelled toy set of untouched and manipulated photos, offline.

Source: the real photos scikit-image ships (astronaut, coffee, chelsea, rocket, ...). A `real/` image is a
random crop of one, JPEG-encoded. A `fake/` image is another random crop in which an elliptical region (on
the astronaut, often her face) was downsampled, upsampled back and blended in with a feathered edge: a
splice that has lost its fine detail, the trace a crude face swap or inpainting leaves. Both classes go
through the same resize and JPEG encoder, so the only systematic difference is the manipulation.

What a detector trained on this learns is that one trace (locally missing high frequencies). It says
nothing about real deepfakes (GAN or diffusion faces, re-enactment, lip-sync), which leave other traces.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Photos with texture almost everywhere: on a flat sky or a dark field a resampled region is invisible, and
# the labels there would be noise.
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "immunohistochemistry",
    "coins",
    "clock",
    "brick",
    "gravel",
    "grass",
)
ASTRONAUT_FACE = (170, 40, 290, 190)  # (left, top, right, bottom) of her face in the 512x512 photo


def photos() -> dict[str, Image.Image]:
    from skimage import data

    out = {}
    for name in PHOTOS:
        arr = np.asarray(getattr(data, name)())
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        out[name] = Image.fromarray(arr[..., :3].astype(np.uint8))
    return out


def _crop(
    rng: random.Random, photo: Image.Image, name: str, size: int
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    w, h = photo.size
    side = int(min(w, h) * rng.uniform(0.45, 0.9))
    if name == "astronaut" and rng.random() < 0.6:  # keep her face in view
        fl, ft, fr, fb = ASTRONAUT_FACE
        left = rng.randint(max(0, fr - side), min(fl, w - side))
        top = rng.randint(max(0, fb - side), min(ft, h - side))
    else:
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
    box = (left, top, left + side, top + side)
    return photo.crop(box).resize((size, size), Image.Resampling.BICUBIC), box


def manipulate(
    rng: random.Random, img: Image.Image, region: tuple[float, float, float, float] | None
) -> Image.Image:
    """Resample an elliptical region (fractions of the image, or a random one) and blend it back."""
    size = img.size[0]
    if region is None:
        rw, rh = rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6)
        rx, ry = rng.uniform(0, 1 - rw), rng.uniform(0, 1 - rh)
        region = (rx, ry, rx + rw, ry + rh)
    box = tuple(int(v * size) for v in region)
    factor = rng.choice((4, 5, 6))
    small = img.resize((max(1, size // factor), max(1, size // factor)), Image.Resampling.BILINEAR)
    resampled = small.resize(img.size, Image.Resampling.NEAREST)  # blocky: the resampling leaves a grid
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(max(1, size // 40)))
    return Image.composite(resampled, img, mask)


def _jpeg(img: Image.Image, rng: random.Random) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(85, 95))
    return buf.getvalue()


def generate(out: Path, count: int, size: int = 128, seed: int = 0) -> dict[str, int]:
    """Write `count` images per label into out/real and out/fake; deterministic for a seed."""
    rng = random.Random(seed)
    sources = photos()
    names = sorted(sources)
    for label in ("real", "fake"):
        (out / label).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        for label in ("real", "fake"):
            name = names[rng.randrange(len(names))]
            img, box = _crop(rng, sources[name], name, size)
            if label == "fake":
                region = None
                if name == "astronaut":
                    region = _face_region(box)
                img = manipulate(rng, img, region)
            (out / label / f"{i:04d}-{name}.jpg").write_bytes(_jpeg(img, rng))
    return {"real": count, "fake": count}


def _face_region(box: tuple[int, int, int, int]) -> tuple[float, float, float, float] | None:
    """The astronaut's face in crop coordinates (fractions), when the crop shows most of it."""
    left, top, right, bottom = box
    side = right - left
    fl, ft, fr, fb = ASTRONAUT_FACE
    if fl < left or ft < top or fr > right or fb > bottom:
        return None
    return ((fl - left) / side, (ft - top) / side, (fr - left) / side, (fb - top) / side)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write real/ and fake/ into")
    parser.add_argument("--count", type=int, default=100, help="images per label")
    parser.add_argument("--size", type=int, default=128, help="square side in pixels")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    counts = generate(args.out, args.count, args.size, args.seed)
    print(json.dumps({"out": str(args.out), "counts": counts, "seed": args.seed}))
    return 0
