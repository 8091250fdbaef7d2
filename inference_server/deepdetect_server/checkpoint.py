"""Checkpoints: one `.safetensors` file whose header carries the model card.

Why safetensors: loading a checkpoint must never run code (no pickle, no `torch.load`), and one file gives
one digest that the operator can pin and roll. The card (architecture, preprocessing, labels, threshold)
travels in the header's `__metadata__` map as JSON under `deepdetect.card`, so the server applies exactly
the preprocessing the detector was trained with.

Also the `checkpoint create|inspect` subcommands.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

CARD_KEY = "deepdetect.card"
CARD_FORMAT = 1
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a bigger header is a broken file

ResizeMode = Literal["crop", "pad"]
DecodeMode = Literal["full", "reduced"]
Interpolation = Literal["bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"]


FaceDetectorName = Literal["haar", "hog"]
AggregationRule = Literal["mean", "confident", "topk"]


class FacesSpec(BaseModel):
    """Crop faces before scoring: which detector, how much context around the box, which faces."""

    model_config = ConfigDict(extra="forbid")

    detector: FaceDetectorName = Field("haar", description="haar: OpenCV cascade; hog: dlib's HOG detector")
    margin: float = Field(0.3, ge=0.0, le=2.0, description="added on each side, as a fraction of the box")
    min_size: int = Field(40, ge=8, description="smallest face side in pixels of the picture")
    detect_size: int = Field(
        320, ge=0, le=4096, description="the detector sees the picture with its longer side scaled down to "
        "this (0: full size); boxes are mapped back, crops come from the full picture")
    select: Literal["largest", "all"] = Field("largest", description="largest face, or up to max_faces")
    max_faces: int = Field(4, ge=1, le=32)


class AggregationSpec(BaseModel):
    """How per-frame scores become one video score (a frame's score is its most fake face)."""

    model_config = ConfigDict(extra="forbid")

    rule: AggregationRule = "mean"
    frames: int = Field(16, ge=1, le=1024, description="frames sampled per video by default")
    fake_threshold: float = Field(0.8, gt=0.0, lt=1.0, description="confident: a frame this sure is fake")
    real_threshold: float = Field(0.2, gt=0.0, lt=1.0, description="confident: a frame this sure is real")
    topk: int = Field(3, ge=1, description="topk: mean of the k most fake frames")


class ModelCard(BaseModel):
    """What the server must know to run a detector the way it was trained."""

    format: int = CARD_FORMAT
    name: str = "deepdetect"
    version: str = "1"
    architecture: str
    num_outputs: Literal[1, 2] = Field(2, description="1: one sigmoid logit, 2: softmax over labels")
    labels: list[str] = Field(default_factory=lambda: ["real", "fake"], min_length=2, max_length=2)
    positive_label: str = "fake"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    input_size: int = Field(..., ge=8, le=4096)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bicubic"
    resize: ResizeMode = Field(
        "crop",
        description="crop: shorter side to input_size/crop_pct, center crop; "
        "pad: longer side to input_size/crop_pct, pad with the mean colour",
    )
    crop_pct: float = Field(0.875, gt=0.0, le=1.0)
    decode: DecodeMode = Field("full", description="reduced: JPEG DCT-scaled decode, >= 2x the resize target")
    faces: FacesSpec | None = Field(None, description="crop faces first (None: score the whole picture)")
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)

    @model_validator(mode="after")
    def _positive_is_a_label(self) -> ModelCard:
        if self.positive_label not in self.labels:
            raise ValueError(f"positive_label {self.positive_label!r} is not one of labels {self.labels}")
        return self

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_label)

    @property
    def negative_label(self) -> str:
        return self.labels[1 - self.positive_index]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def normalize_pin(pin: str) -> str:
    """'abc..', 'sha256:abc..' and 'SHA256:ABC..' all mean the same pin."""
    pin = pin.strip().lower()
    return pin if pin.startswith("sha256:") else "sha256:" + pin


def _header(data: bytes, source: str) -> dict[str, object]:
    if len(data) < 8:
        raise CheckpointError(f"{source}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER_BYTES or 8 + n > len(data):
        raise CheckpointError(f"{source}: not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{source}: not a safetensors file (header is not JSON)") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{source}: not a safetensors file (header is not an object)")
    return header


def card_from_bytes(data: bytes, source: str = "checkpoint") -> ModelCard:
    """Parse the card out of a safetensors header without touching the tensors."""
    meta = _header(data, source).get("__metadata__") or {}
    if not isinstance(meta, dict) or CARD_KEY not in meta:
        raise CheckpointError(f"{source}: no model card ({CARD_KEY!r} missing from __metadata__)")
    try:
        return ModelCard.model_validate_json(meta[CARD_KEY])
    except ValidationError as exc:
        raise CheckpointError(f"{source}: invalid model card: {exc}") from exc


@dataclass(frozen=True)
class LoadedCheckpoint:
    card: ModelCard
    digest: str
    tensors: dict[str, torch.Tensor]


def load_checkpoint(path: Path | str, pin: str = "") -> LoadedCheckpoint:
    """Read the file once, hash those bytes, check the pin, then parse the same bytes.

    Hashing and parsing one in-memory copy means the bytes we verified are the bytes we load.
    """
    from safetensors.torch import load as st_load

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    digest = sha256_digest(data)
    if pin and normalize_pin(pin) != digest:
        raise CheckpointError(
            f"checkpoint {path} does not match its pinned digest: expected {normalize_pin(pin)}, got {digest}"
        )
    card = card_from_bytes(data, str(path))
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: cannot read tensors: {exc}") from exc
    return LoadedCheckpoint(card=card, digest=digest, tensors=tensors)


def check_card_matches(card: ModelCard, architecture: str = "", input_size: int = 0) -> None:
    """Refuse a checkpoint whose card contradicts what the service declares (empty/0 = not declared)."""
    if architecture and card.architecture != architecture:
        raise CheckpointError(
            f"checkpoint is a {card.architecture!r} model but the service expects {architecture!r} "
            "(spec.model.architecture)")
    if input_size and card.input_size != input_size:
        raise CheckpointError(
            f"checkpoint expects {card.input_size} px inputs but the service declares {input_size} "
            "(spec.model.inputSize)")


def save_checkpoint(path: Path | str, tensors: dict[str, torch.Tensor], card: ModelCard) -> str:
    """Write tensors + card as one safetensors file; returns its digest."""
    from safetensors.torch import save

    # safetensors refuses shared or strided storage: give it plain contiguous copies.
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    data = save(plain, metadata={CARD_KEY: card.model_dump_json()})
    Path(path).write_bytes(data)
    return sha256_digest(data)


def card_for_architecture(arch: str, input_size: int, **overrides: object) -> ModelCard:
    """A card whose preprocessing defaults come from timm's own data config for the architecture."""
    import timm
    from timm.data import resolve_model_data_config

    model = timm.create_model(arch, pretrained=False, num_classes=int(overrides.get("num_outputs", 2)))
    cfg = resolve_model_data_config(model)
    fields: dict[str, object] = {
        "architecture": arch,
        "input_size": input_size,
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "crop_pct": cfg.get("crop_pct", 0.875),
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelCard.model_validate(fields)


def create_checkpoint(
    out: Path | str, card: ModelCard, init: Path | str | None = None
) -> tuple[str, list[str]]:
    """Build the timm model of the card (random init, or weights from `init`) and save it with the card.

    Returns (digest, names of tensors left at random init because `init` lacked them or had another shape,
    typically the classifier head of an ImageNet backbone).
    """
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(card.architecture, pretrained=False, num_classes=card.num_outputs)
    state = model.state_dict()
    fresh: list[str] = []
    if init is not None:
        given = load_file(str(init))
        usable = {k: v for k, v in given.items() if k in state and state[k].shape == v.shape}
        fresh = sorted(set(state) - set(usable))
        state.update(usable)
    return save_checkpoint(out, state, card), fresh


# --- CLI: `deepdetect-server checkpoint create|inspect` -------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="checkpoint_command", required=True)
    create = sub.add_parser("create", help="write a checkpoint for a timm architecture")
    create.add_argument("--arch", required=True, help="timm model name, e.g. efficientnet_b4")
    create.add_argument("--input-size", type=int, required=True)
    create.add_argument("--out", type=Path, required=True)
    create.add_argument("--init", type=Path, help="local .safetensors weights (default: random init)")
    create.add_argument("--labels", default="real,fake", help="negative,positive (default real,fake)")
    create.add_argument("--positive-label", default=None, help="default: the second label")
    create.add_argument("--num-outputs", type=int, choices=(1, 2), default=2)
    create.add_argument("--threshold", type=float, default=0.5)
    create.add_argument("--resize", choices=("crop", "pad"), default="crop")
    create.add_argument("--crop-pct", type=float, default=None, help="default: timm's for the architecture")
    create.add_argument("--interpolation", default=None, help="default: timm's for the architecture")
    create.add_argument("--decode", choices=("full", "reduced"), default="full")
    create.add_argument("--faces", choices=("haar", "hog"), default=None, help="crop faces first")
    create.add_argument("--face-margin", type=float, default=0.3)
    create.add_argument("--aggregation", choices=("mean", "confident", "topk"), default="mean")
    create.add_argument("--frames", type=int, default=16, help="frames sampled per video by default")
    create.add_argument("--name", default="deepdetect")
    create.add_argument("--version", default="1")
    inspect = sub.add_parser("inspect", help="print a checkpoint's card and digest")
    inspect.add_argument("file", type=Path)


def run(args: argparse.Namespace) -> int:
    try:
        if args.checkpoint_command == "create":
            return _run_create(args)
        return _run_inspect(args)
    except (CheckpointError, ValidationError, ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run_create(args: argparse.Namespace) -> int:
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    card = card_for_architecture(
        args.arch,
        args.input_size,
        labels=labels,
        positive_label=args.positive_label or (labels[1] if len(labels) > 1 else None),
        num_outputs=args.num_outputs,
        threshold=args.threshold,
        resize=args.resize,
        crop_pct=args.crop_pct,
        interpolation=args.interpolation,
        decode=args.decode,
        faces=FacesSpec(detector=args.faces, margin=args.face_margin) if args.faces else None,
        aggregation=AggregationSpec(rule=args.aggregation, frames=args.frames),
        name=args.name,
        version=args.version,
    )
    digest, fresh = create_checkpoint(args.out, card, args.init)
    if args.init is None:
        print("note: random init (untrained): use --init to load trained weights", file=sys.stderr)
    elif fresh:
        print(f"note: {len(fresh)} tensors not in --init, left at random init: {', '.join(fresh[:8])}",
              file=sys.stderr)
    print(f"wrote {args.out} {digest}")
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    data = Path(args.file).read_bytes()
    card = card_from_bytes(data, str(args.file))
    print(json.dumps({"card": card.model_dump(mode="json"), "digest": sha256_digest(data)}, indent=2))
    return 0
