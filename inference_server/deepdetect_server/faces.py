"""Faces, as the model card declares them: detect, pick, add the margin, crop.

Face-swap detectors are trained on face crops, so the server must crop the way training did: the card's
`faces` block (detector, margin, minimum size, which faces) is that contract. Both detectors run offline
with files their wheels ship (OpenCV's Haar cascade XML, dlib's built-in HOG model): nothing is
downloaded. `bench/faces.py` measures them on a real photo; Haar is the default (it finds exactly the
astronaut's face; HOG at upsample 1 adds a false positive and is slower). A stronger detector is one more
class with `detect`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .checkpoint import FaceDetectorName, FacesSpec

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the picture (x1, y1 exclusive)


class FaceDetector(Protocol):
    def detect(self, rgb: np.ndarray, min_size: int) -> list[Box]: ...


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (the XML ships in opencv-python-headless < 5)."""

    def __init__(self) -> None:
        import cv2

        self._cv2 = cv2
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")

    def detect(self, rgb: np.ndarray, min_size: int) -> list[Box]:
        grey = self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)
        found = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                               minSize=(min_size, min_size))
        return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]


class HogDetector:
    """dlib's built-in HOG + linear SVM frontal-face detector (upsampled once, as dlib's examples do)."""

    def __init__(self, upsample: int = 1) -> None:
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample

    def detect(self, rgb: np.ndarray, min_size: int) -> list[Box]:
        h, w = rgb.shape[:2]
        boxes = []
        for r in self._detector(np.ascontiguousarray(rgb), self.upsample):
            box = (max(0, r.left()), max(0, r.top()), min(w, r.right()), min(h, r.bottom()))
            if min(box[2] - box[0], box[3] - box[1]) >= min_size:
                boxes.append(box)
        return boxes


_local = threading.local()


def detector(name: FaceDetectorName) -> FaceDetector:
    """One detector per thread and name, built on first use: a cascade is not safe to share between
    threads (two concurrent images made one of them miss its face)."""
    cache: dict[str, FaceDetector] = _local.__dict__.setdefault("detectors", {})
    if name not in cache:
        cache[name] = HaarDetector() if name == "haar" else HogDetector()
    return cache[name]


@dataclass(frozen=True)
class Face:
    box: Box  # the detected face
    crop: np.ndarray  # the face plus its margin, RGB uint8


def select(boxes: list[Box], spec: FacesSpec) -> list[Box]:
    """Largest first; one face or up to `max_faces`."""
    ranked = sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    return ranked[:1] if spec.select == "largest" else ranked[: spec.max_faces]


def with_margin(box: Box, margin: float, width: int, height: int) -> Box:
    """The box grown by `margin` x its size on each side, clipped to the picture."""
    x0, y0, x1, y1 = box
    dx, dy = round((x1 - x0) * margin), round((y1 - y0) * margin)
    return max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)


def detect_scaled(rgb: np.ndarray, spec: FacesSpec) -> list[Box]:
    """Detect on a picture scaled to `detect_size` (the detector's cost grows with the pixels), boxes in
    the full picture's pixels."""
    h, w = rgb.shape[:2]
    scale = spec.detect_size / max(h, w) if spec.detect_size else 1.0
    if scale >= 1.0:
        return detector(spec.detector).detect(rgb, spec.min_size)
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)),
                                                   Image.Resampling.BILINEAR))
    found = detector(spec.detector).detect(small, max(8, round(spec.min_size * scale)))
    return [(max(0, round(x0 / scale)), max(0, round(y0 / scale)), min(w, round(x1 / scale)),
             min(h, round(y1 / scale))) for x0, y0, x1, y1 in found]


def find_faces(rgb: np.ndarray, spec: FacesSpec) -> list[Face]:
    """The faces the card asks for, cropped with their margin."""
    h, w = rgb.shape[:2]
    faces = []
    for box in select(detect_scaled(rgb, spec), spec):
        x0, y0, x1, y1 = with_margin(box, spec.margin, w, h)
        faces.append(Face(box, np.ascontiguousarray(rgb[y0:y1, x0:x1])))
    return faces
