"""One decoded picture (an image, a video frame) -> the model inputs the card asks for.

Shared by the image path (a decode thread) and the video path (a decode worker process), so a frame and
a still image are cropped and resized by the same code: whole picture without a `faces` block, one input
per selected face with it. Only small uint8 arrays leave the decode worker.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .checkpoint import ModelCard
from .faces import Box, find_faces
from .preprocess import Preprocessor
from .video import Container, SampleStats, VideoLimits, sample


@dataclass(frozen=True)
class PictureInputs:
    """What one picture gives the model: `t` (seconds, None for an image) and (box, input) pairs."""

    t: float | None
    width: int
    height: int
    inputs: list[tuple[Box | None, np.ndarray]]  # box None: the whole picture


def picture_inputs(rgb: np.ndarray, card: ModelCard, prep: Preprocessor, t: float | None = None
                   ) -> PictureInputs:
    h, w = rgb.shape[:2]
    if card.faces is None:
        return PictureInputs(t, w, h, [(None, prep.from_rgb(Image.fromarray(rgb)))])
    faces = find_faces(rgb, card.faces)
    return PictureInputs(t, w, h, [(f.box, prep.from_rgb(Image.fromarray(f.crop))) for f in faces])


@functools.cache
def _for_card(card_json: str) -> tuple[ModelCard, Preprocessor]:
    card = ModelCard.model_validate_json(card_json)
    return card, Preprocessor(card, max_pixels=1 << 62)  # frames were size-checked from the header


def video_inputs(data: bytes, fmt: Container, limits: VideoLimits, k: int, card_json: str
                 ) -> tuple[list[PictureInputs], int, float]:
    """The decode worker's job: sample K frames, then crop/resize them as the card says.

    Returns (inputs per sampled frame, frames decoded, decode seconds).
    """
    card, prep = _for_card(card_json)
    started = time.perf_counter()
    stats = SampleStats()
    frames = sample(data, fmt, limits, k, stats)
    decode_s = time.perf_counter() - started
    return [picture_inputs(f.rgb, card, prep, f.t) for f in frames], stats.frames_decoded, decode_s
