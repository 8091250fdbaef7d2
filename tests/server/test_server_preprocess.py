"""Preprocessing follows the card: crop vs pad geometry, exact match with timm, reduced-decode parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deepdetect_server.checkpoint import card_for_architecture, load_checkpoint
from deepdetect_server.media import decode_rgb, open_image
from deepdetect_server.model import Detector
from deepdetect_server.preprocess import Preprocessor, fill_colour, normalize_batch, plan, reference_tensor
from server_helpers import ARCH, jpeg

pytestmark = pytest.mark.timeout(60)


def serve_tensor(card, data: bytes) -> torch.Tensor:
    arr = Preprocessor(card, 10**9)(data)
    return normalize_batch(torch.from_numpy(arr)[None], torch.tensor(card.mean), torch.tensor(card.std))[0]


@pytest.mark.parametrize("resize", ["crop", "pad"])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket"])
def test_full_decode_path_equals_timm_reference(photos: dict[str, bytes], resize: str, name: str) -> None:
    card = card_for_architecture(ARCH, 160, resize=resize)
    assert torch.allclose(serve_tensor(card, photos[name]), reference_tensor(card, photos[name]), atol=1e-6)


def test_portrait_image_matches_reference(photo_arrays: dict[str, np.ndarray]) -> None:
    data = jpeg(np.ascontiguousarray(np.rot90(photo_arrays["coffee"])))  # 400 x 600, portrait
    for resize in ("crop", "pad"):
        card = card_for_architecture(ARCH, 96, resize=resize, crop_pct=0.9)
        assert torch.allclose(serve_tensor(card, data), reference_tensor(card, data), atol=1e-6)


def test_crop_fills_the_frame_and_pad_keeps_the_whole_picture(photos: dict[str, bytes]) -> None:
    # coffee is 600 x 400: crop loses the sides, pad keeps them and adds bands of the mean colour.
    crop = card_for_architecture(ARCH, 100, resize="crop", crop_pct=1.0)
    pad = card_for_architecture(ARCH, 100, resize="pad", crop_pct=1.0)
    assert plan(crop, 600, 400).size == (150, 100) and plan(crop, 600, 400).offset == (-25, 0)
    assert plan(pad, 600, 400).size == (100, 67) and plan(pad, 600, 400).offset == (0, 16)
    padded = Preprocessor(pad, 10**9)(photos["coffee"])
    assert padded.shape == (100, 100, 3)
    assert (padded[:16] == fill_colour(pad)).all() and (padded[-17:] == fill_colour(pad)).all()
    cropped = Preprocessor(crop, 10**9)(photos["coffee"])
    assert not (cropped[:16] == fill_colour(crop)).all()


def test_reduced_decode_really_decodes_smaller(photo_arrays: dict[str, np.ndarray]) -> None:
    big = jpeg(photo_arrays["chelsea"], side=1400)
    rgb, box = decode_rgb(open_image(big, 10**9), draft_size=(300, 200))
    assert rgb.size[0] < 1400 / 2 + 1 and rgb.size[0] >= 300
    assert box[2] == pytest.approx(1400 / (1400 // rgb.size[0]), rel=0.01)


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_reduced_decode_parity_with_full_on_real_photos(
    photo_arrays: dict[str, np.ndarray], tmp_path, resize: str
) -> None:
    """`decode: reduced` is a declared fast path: near-identical tensors and scores to the reference."""
    from server_helpers import make_checkpoint

    full_card = card_for_architecture(ARCH, 160, resize=resize, decode="full")
    reduced_card = full_card.model_copy(update={"decode": "reduced"})
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "m.safetensors", 160, resize=resize))
    det = Detector(ckpt.card.model_copy(update={"resize": resize}), ckpt.tensors, device="cpu")
    images = [jpeg(arr, side=side) for arr, side in zip(photo_arrays.values(), (1400, 1200, 2000, 900),
                                                          strict=True)]
    full = torch.stack([serve_tensor(full_card, d) for d in images])
    reduced = torch.stack([serve_tensor(reduced_card, d) for d in images])
    reference = torch.stack([reference_tensor(full_card, d) for d in images])
    assert torch.allclose(full, reference, atol=1e-6)
    diff = (reduced - full).abs()
    assert diff.mean() < 0.01  # about 0.3 grey levels of 255 on average
    assert diff.max() < 0.25
    assert diff.mean() > 0  # the reduced path did run
    s_full = det.predict([Preprocessor(full_card, 10**9)(d) for d in images])
    s_red = det.predict([Preprocessor(reduced_card, 10**9)(d) for d in images])
    assert np.allclose(s_full, s_red, atol=0.01)


def test_non_jpeg_ignores_reduced_decode(photo_arrays: dict[str, np.ndarray]) -> None:
    from server_helpers import encode

    data = encode(photo_arrays["rocket"], "PNG")
    card = card_for_architecture(ARCH, 128, decode="reduced")
    assert torch.allclose(serve_tensor(card, data), reference_tensor(card, data), atol=1e-6)
