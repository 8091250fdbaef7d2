"""Device-agnostic parts of the runtimes, run on CPU: thread plan, GPU buckets, GPU decode fallbacks and
the GPU resize checked against the CPU serving path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from deepdetect_server.checkpoint import card_for_architecture
from deepdetect_server.preprocess import Preprocessor
from deepdetect_server.runtimes.buckets import bucket_for, padding_waste, plan_buckets
from deepdetect_server.runtimes.gpu_preprocess import (
    GpuDecoder,
    check_parity,
    gpu_decodable,
    jpeg_info,
    resize_to_card,
)
from deepdetect_server.runtimes.threads import candidate_threads, plan_threads
from PIL import Image
from server_helpers import encode, jpeg

# --- thread plan -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "decode_ms", "forward_ms", "threads"), [
    # the 160 px test model: decode is most of the work; one forward thread leaves a core to decode
    ("decode-bound", 3.0, {1: 1.7, 2: 1.0}, 1),
    # EfficientNet-B0 at 224 px on ONNX Runtime: the forward pass is the work; give it both cores
    ("compute-bound", 3.5, {1: 14.6, 2: 9.2}, 2),
    # no speed-up from a second thread: keep one
    ("no scaling", 3.0, {1: 10.0, 2: 10.0}, 1),
])
def test_thread_plan_follows_the_measured_costs(name: str, decode_ms: float, forward_ms: dict[int, float],
                                                threads: int) -> None:
    plan = plan_threads(2, decode_ms / 1000, {t: v / 1000 for t, v in forward_ms.items()})
    assert plan.threads == threads, name
    assert 1 <= plan.decode_workers <= 2


def test_thread_plan_rate_and_workers() -> None:
    plan = plan_threads(2, 0.0035, {1: 0.0146, 2: 0.0092})
    assert plan.predicted_img_s == pytest.approx(min(2 / (0.0035 + 2 * 0.0092), 1 / 0.0092))
    assert plan.bound == "cpu"
    assert plan.decode_workers == 1  # 92 img/s x 3.5 ms x 2 (burst margin) < 1 thread
    heavy_decode = plan_threads(8, 0.02, {1: 0.01, 4: 0.004, 8: 0.003})
    assert heavy_decode.decode_workers > 1


def test_thread_plan_keeps_fixed_settings() -> None:
    plan = plan_threads(4, 0.003, {1: 0.01, 2: 0.006, 4: 0.004}, fixed_threads=2, fixed_workers=3)
    assert (plan.threads, plan.decode_workers) == (2, 3)
    unmeasured = plan_threads(4, 0.003, {1: 0.01, 4: 0.004}, fixed_threads=3)
    assert unmeasured.threads == 3
    with pytest.raises(ValueError):
        plan_threads(2, 0.003, {})


def test_candidate_threads() -> None:
    assert candidate_threads(1) == [1]
    assert candidate_threads(2) == [1, 2]
    assert candidate_threads(16) == [1, 8, 16]


# --- GPU buckets -------------------------------------------------------------------------------------------


def test_buckets_are_powers_of_two_up_to_the_max_batch() -> None:
    assert plan_buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert plan_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert plan_buckets(1) == [1]
    assert plan_buckets(32, smallest=8) == [8, 16, 32]
    with pytest.raises(ValueError):
        plan_buckets(0)


def test_every_batch_size_has_the_smallest_bucket_that_holds_it() -> None:
    buckets = plan_buckets(48)
    for n in range(1, 49):
        b = bucket_for(n, buckets)
        assert b >= n and all(x < n for x in buckets if x < b)
    with pytest.raises(ValueError, match="larger than the largest"):
        bucket_for(49, buckets)
    with pytest.raises(ValueError):
        bucket_for(0, buckets)
    assert padding_waste(plan_buckets(256), 256) < 0.3


# --- GPU decode: which files go to the CPU ------------------------------------------------------------------


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def _jpeg(arr: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if kw.pop("cmyk", False):
        img = img.convert("CMYK")
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_gpu_decode_takes_baseline_jpegs_and_sends_the_rest_to_the_cpu(astronaut: np.ndarray) -> None:
    baseline = _jpeg(astronaut, quality=90)
    info = jpeg_info(baseline)
    assert info is not None and (info.width, info.height, info.components) == (512, 512, 3)
    assert gpu_decodable(baseline) == (True, "")
    assert gpu_decodable(_jpeg(astronaut[..., 0], quality=90)) == (True, "")  # greyscale: nvJPEG -> RGB
    assert gpu_decodable(_jpeg(astronaut, progressive=True)) == (False, "progressive")
    assert gpu_decodable(_jpeg(astronaut, cmyk=True)) == (False, "CMYK/YCCK")
    assert gpu_decodable(encode(astronaut, "PNG")) == (False, "not a baseline JPEG")
    assert gpu_decodable(baseline[:20]) == (False, "not a baseline JPEG")  # cut before the frame header
    assert gpu_decodable(b"\xff\xd8\xff\xda\x00\x02") == (False, "not a baseline JPEG")


def test_gpu_decoder_falls_back_per_image_and_keeps_the_order(astronaut: np.ndarray) -> None:
    """The decoder's routing on a CPU 'device' (torchvision decodes there too): every image comes back,
    in order, at the card's size, and each fallback is counted by its reason."""
    card = card_for_architecture("test_efficientnet", 64)
    pre = Preprocessor(card, 10**8)
    files = [_jpeg(astronaut), _jpeg(astronaut, progressive=True), encode(astronaut, "PNG"),
             _jpeg(astronaut, cmyk=True), _jpeg(astronaut[::2, ::3])]
    out = GpuDecoder(card, torch.device("cpu"), pre)
    batch = out(files)
    assert tuple(batch.shape) == (5, 64, 64, 3) and batch.dtype == torch.uint8
    assert out.fallbacks == {"progressive": 1, "not a baseline JPEG": 1, "CMYK/YCCK": 1}
    cpu = [pre(f) for f in files]
    parity = check_parity(cpu, [b.numpy() for b in batch])
    assert parity.ok, parity.describe()
    assert np.array_equal(batch[1].numpy(), cpu[1])  # fallbacks are the CPU path exactly


# --- GPU resize against the CPU reference ----------------------------------------------------------------


@pytest.mark.parametrize("resize", ["crop", "pad"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_tensor_resize_matches_the_pillow_serving_path(photo_arrays: dict,
                                                       resize: str, interpolation: str) -> None:
    card = card_for_architecture("test_efficientnet", 160, resize=resize, interpolation=interpolation)
    pre = Preprocessor(card, 10**8)
    ref, cand = [], []
    for arr in photo_arrays.values():
        data = jpeg(arr)
        ref.append(pre(data))
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        cand.append(resize_to_card(torch.from_numpy(decoded.copy()), card).numpy())
    parity = check_parity(ref, cand)
    assert parity.ok, parity.describe()
    assert all(c.shape == (160, 160, 3) for c in cand)


def test_preprocess_parity_catches_a_misplaced_crop(photo_arrays: dict) -> None:
    card = card_for_architecture("test_efficientnet", 160)
    pre = Preprocessor(card, 10**8)
    data = jpeg(photo_arrays["astronaut"])
    ref = pre(data)
    shifted = np.roll(ref, 12, axis=1)
    assert not check_parity([ref], [shifted]).ok
    with pytest.raises(ValueError):
        check_parity([ref], [])


def test_gpu_decoder_leaves_the_pixel_limit_to_the_cpu_path(astronaut: np.ndarray) -> None:
    from deepdetect_server.errors import ImageTooLarge

    card = card_for_architecture("test_efficientnet", 64)
    decoder = GpuDecoder(card, torch.device("cpu"), Preprocessor(card, max_pixels=100_000))
    with pytest.raises(ImageTooLarge):
        decoder([_jpeg(astronaut)])  # 512 x 512 > 100,000 pixels: refused before any decode, as on CPU
    assert decoder.fallbacks == {"over the pixel limit": 1}
