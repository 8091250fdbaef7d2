"""The sample set int8 is calibrated on and judged on: a folder of images, or one packed file.

A folder is read ImageFolder-style: images under sub-folders named after the card's labels (`real/`,
`fake/`) carry that label, anything else is unlabelled. A packed set is one `.safetensors` file (tensors
`sample.<i>`: the encoded image bytes as uint8, metadata `deepdetect.samples`: names and labels), so the
operator's `fetch` init container can download and verify it exactly like a checkpoint.

The set is split deterministically, label by label, alternating: even positions calibrate, odd positions
are the held-out set the drift gate scores. Images go through the server's own `Preprocessor`, so both
halves are the pixels the model will really see.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import ModelCard
from ..errors import DeepDetectError, StartupError

SAMPLES_KEY = "deepdetect.samples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    label: str | None


@dataclass(frozen=True)
class SampleSet:
    calibration: np.ndarray  # uint8 NHWC
    holdout: np.ndarray  # uint8 NHWC
    holdout_labels: list[int] | None  # 1 = positive label; None unless every held-out image has a label
    digest: str  # over names and bytes: part of the int8 graph's cache key


def read_samples(path: Path, card: ModelCard) -> list[Sample]:
    """Every sample in a folder or a packed file, sorted by name."""
    if not path.exists():
        raise StartupError(f"sample set {path} does not exist")
    if path.is_dir():
        out = []
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            rel = file.relative_to(path)
            label = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in card.labels else None
            out.append(Sample(str(rel), file.read_bytes(), label))
        return out
    return _read_packed(path, card)


def _read_packed(path: Path, card: ModelCard) -> list[Sample]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get(SAMPLES_KEY, "{}"))
            names, labels = meta.get("names", []), meta.get("labels", [])
            out = []
            for i, name in enumerate(names):
                label = labels[i] if i < len(labels) and labels[i] in card.labels else None
                out.append(Sample(str(name), f.get_tensor(f"sample.{i}").tobytes(), label))
            return out
    except (OSError, ValueError, KeyError) as exc:
        raise StartupError(f"sample set {path}: not a packed sample file ({exc})") from exc
    except Exception as exc:  # safetensors' own error type for a damaged file
        raise StartupError(f"sample set {path}: cannot read it ({exc})") from exc


def pack_samples(folder: Path, out: Path, labels: list[str]) -> int:
    """Write a folder's images (labels from sub-folder names) as one packed sample file; returns the count."""
    from safetensors.numpy import save_file

    probe = ModelCard(architecture="-", input_size=8, mean=(0, 0, 0), std=(1, 1, 1), labels=labels,
                      positive_label=labels[1])
    samples = read_samples(folder, probe)
    if not samples:
        raise StartupError(f"no images under {folder}")
    tensors = {f"sample.{i}": np.frombuffer(s.data, dtype=np.uint8) for i, s in enumerate(samples)}
    meta = {"names": [s.name for s in samples], "labels": [s.label for s in samples]}
    save_file(tensors, str(out), metadata={SAMPLES_KEY: json.dumps(meta)})
    return len(samples)


def load_sample_set(path: Path, card: ModelCard, preprocess: Callable[[bytes], np.ndarray],
                    max_calibration: int = 128, max_holdout: int = 256) -> SampleSet:
    """Read, split (per label, alternating) and preprocess; at least 2 images on each side."""
    samples = read_samples(path, card)
    digest = hashlib.sha256()
    groups: dict[str | None, list[Sample]] = {}
    for s in samples:
        digest.update(s.name.encode() + b"\0" + hashlib.sha256(s.data).digest())
        groups.setdefault(s.label, []).append(s)
    calibration: list[Sample] = []
    holdout: list[Sample] = []
    for group in groups.values():
        calibration += group[0::2]
        holdout += group[1::2]
    calibration, holdout = calibration[:max_calibration], _balanced(holdout, max_holdout)
    if len(calibration) < 2 or len(holdout) < 2:
        raise StartupError(f"sample set {path} has {len(samples)} images: int8 needs at least 4 "
                           "(half calibrate, half are held out to measure drift)")
    labelled = all(s.label is not None for s in holdout) and len({s.label for s in holdout}) == 2
    return SampleSet(
        calibration=_decode(calibration, preprocess),
        holdout=_decode(holdout, preprocess),
        holdout_labels=[int(s.label == card.positive_label) for s in holdout] if labelled else None,
        digest="sha256:" + digest.hexdigest(),
    )


def _balanced(items: list[Sample], limit: int) -> list[Sample]:
    """At most `limit`, taken round-robin over labels so a cap never drops a whole class."""
    if len(items) <= limit:
        return items
    by_label: dict[str | None, list[Sample]] = {}
    for s in items:
        by_label.setdefault(s.label, []).append(s)
    out: list[Sample] = []
    queues = list(by_label.values())
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def _decode(samples: list[Sample], preprocess: Callable[[bytes], np.ndarray]) -> np.ndarray:
    arrays = []
    for s in samples:
        try:
            arrays.append(preprocess(s.data))
        except DeepDetectError as exc:
            raise StartupError(f"sample {s.name}: {exc.message}") from exc
    return np.stack(arrays)


# --- `deepdetect-server samples pack` ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="samples_command", required=True)
    pack = sub.add_parser("pack", help="folder of images (label sub-folders) -> one .safetensors file")
    pack.add_argument("folder", type=Path)
    pack.add_argument("--out", type=Path, required=True)
    pack.add_argument("--labels", default="real,fake", help="negative,positive: the sub-folder names")


def run(args: argparse.Namespace) -> int:
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if len(labels) != 2:
        print("error: --labels takes two names, negative,positive", file=sys.stderr)
        return 2
    try:
        count = pack_samples(args.folder, args.out, labels)
    except (StartupError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {count} images")
    return 0
