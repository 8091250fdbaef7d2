"""Scores of crops -> the answer: per-frame `{t, box, score}`, the aggregate, the verdict.

A frame's score is its most fake face (one swapped face makes the frame fake); frames without a face are
listed with `score: null` and left out of the aggregate. No face anywhere is a 200 with outcome `no_face`
and no score: scoring the background would be a guess dressed as a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .aggregate import aggregate
from .checkpoint import ModelCard
from .inputs import PictureInputs


def face_body(pictures: Sequence[PictureInputs], scores: Sequence[float], card: ModelCard, threshold: float,
              media: str) -> dict[str, Any]:
    frames: list[dict[str, Any]] = []
    at = 0
    faces_found = 0
    for pic in pictures:
        n = len(pic.inputs)
        mine = list(zip((box for box, _ in pic.inputs), scores[at : at + n], strict=True))
        at += n
        faces_found += n if card.faces is not None else 0
        frame: dict[str, Any] = {"t": pic.t, "box": None, "score": None, "faces": n}
        if mine:
            box, score = max(mine, key=lambda pair: pair[1])
            frame["box"] = list(box) if box is not None else [0, 0, pic.width, pic.height]
            frame["score"] = score
        frames.append(frame)
    scored = [f["score"] for f in frames if f["score"] is not None]
    body: dict[str, Any] = {"media": media, "threshold": threshold, "rule": card.aggregation.rule,
                            "frames_sampled": len(pictures), "faces_found": faces_found}
    if not scored:
        body |= {"outcome": "no_face", "verdict": None, "label": None, "score": None}
    else:
        score = aggregate(scored, card.aggregation)
        label = card.positive_label if score >= threshold else card.negative_label
        body |= {"outcome": "scored", "verdict": label, "label": label, "score": score}
    body["frames"] = frames
    return body
