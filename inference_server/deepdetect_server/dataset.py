"""Labelled media sets for `evaluate` and `train`: a folder, a CSV/JSONL manifest, or one packed file.

Why one loader: the gate in the operator, the trainer and a person at a terminal must read a set the same
way and agree on its digest. Forms:

- a folder with one sub-folder per label (`real/`, `fake/`: the card's labels), files sorted by path;
- a manifest `*.csv` (header `path,label`) or `*.jsonl` (`{"path": ..., "label": ...}` per line), paths
  relative to the manifest, labels by name or 0/1 (1 = the positive label);
- a packed `*.safetensors` (`deepdetect-server dataset pack`): each file's raw bytes as a uint8 tensor and
  the names and labels in the header. One file, so the validation Job's `fetch` downloads and verifies it
  like a checkpoint (same schemes, credentials, sha256 pin).

The digest hashes (label, sha256 of the bytes) of every item, sorted: the same set gives the same digest in
every form, and renaming a file does not change it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

DATASET_KEY = "deepdetect.dataset"
MEDIA_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".mp4", ".webm", ".avi", ".mov", ".mkv"}


class DatasetError(ValueError):
    """A labelled set that cannot be read as asked (missing, empty, unknown label...)."""


@dataclass(frozen=True)
class Item:
    name: str
    label: int  # 1: the positive label (fake), 0: the negative one
    data: bytes


@dataclass(frozen=True)
class Dataset:
    items: list[Item]
    labels: tuple[str, str]  # (negative, positive)

    @property
    def digest(self) -> str:
        lines = sorted(f"{it.label}:{hashlib.sha256(it.data).hexdigest()}" for it in self.items)
        return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()

    @property
    def counts(self) -> dict[str, int]:
        positives = sum(it.label for it in self.items)
        return {self.labels[0]: len(self.items) - positives, self.labels[1]: positives}

    def split(self, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """(train, validation), stratified per label and deterministic for a seed."""
        train: list[Item] = []
        val: list[Item] = []
        for label in (0, 1):
            group = sorted((it for it in self.items if it.label == label), key=lambda it: it.name)
            random.Random(f"{seed}:{label}").shuffle(group)
            n_val = max(1, round(len(group) * val_fraction)) if len(group) > 1 else 0
            val += group[:n_val]
            train += group[n_val:]
        return Dataset(train, self.labels), Dataset(val, self.labels)


def load_dataset(path: Path | str, labels: tuple[str, str] = ("real", "fake")) -> Dataset:
    """Read a labelled set in any of the forms above; labels are (negative, positive)."""
    path = Path(path)
    if path.is_dir():
        items = _from_folder(path, labels)
    elif path.suffix == ".safetensors":
        items = _from_pack(path, labels)
    elif path.suffix in (".csv", ".jsonl"):
        items = _from_manifest(path, labels)
    elif not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    else:
        raise DatasetError(
            f"dataset {path}: expected a folder, a .csv/.jsonl manifest or a .safetensors pack"
        )
    if not items:
        raise DatasetError(f"dataset {path} has no items")
    return Dataset(items, labels)


def _label_of(value: object, labels: tuple[str, str], where: str) -> int:
    text = str(value).strip()
    if text in ("0", "1"):
        return int(text)
    if text in labels:
        return labels.index(text)
    raise DatasetError(f"{where}: label {text!r} is not one of {list(labels)} (or 0/1)")


def _from_folder(root: Path, labels: tuple[str, str]) -> list[Item]:
    missing = [lab for lab in labels if not (root / lab).is_dir()]
    if len(missing) == 2:
        raise DatasetError(f"dataset folder {root} needs sub-folders {labels[0]}/ and {labels[1]}/")
    items = []
    for index, label in enumerate(labels):
        folder = root / label
        if not folder.is_dir():
            continue
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in MEDIA_SUFFIXES:
                items.append(Item(str(file.relative_to(root)), index, file.read_bytes()))
    return items


def _read(base: Path, rel: str, where: str) -> bytes:
    file = (base / rel).resolve()
    try:
        return file.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read {rel}: {exc.strerror}") from None


def _from_manifest(path: Path, labels: tuple[str, str]) -> list[Item]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"cannot read manifest {path}: {exc.strerror}") from None
    rows: list[tuple[int, dict[str, object]]] = []
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: a CSV manifest needs a header with 'path' and 'label'")
        rows = [(n, dict(row)) for n, row in enumerate(reader, start=2)]
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "path" not in row or "label" not in row:
                raise DatasetError(f"{path}:{n}: each line needs 'path' and 'label'")
            rows.append((n, row))
    return [
        Item(
            str(row["path"]),
            _label_of(row["label"], labels, f"{path}:{n}"),
            _read(path.parent, str(row["path"]), f"{path}:{n}"),
        )
        for n, row in rows
    ]


def _from_pack(path: Path, labels: tuple[str, str]) -> list[Item]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get(DATASET_KEY, "null"))
            if not isinstance(meta, dict) or not isinstance(meta.get("items"), list):
                raise DatasetError(f"{path}: not a dataset pack ({DATASET_KEY!r} missing from the header)")
            pack_labels = tuple(meta.get("labels", labels))
            items = []
            for i, entry in enumerate(meta["items"]):
                label = _label_of(pack_labels[int(entry["label"])], labels, f"{path} item {i}")
                items.append(Item(str(entry["name"]), label, f.get_tensor(f"item.{i}").tobytes()))
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read the dataset pack: {exc}") from None
    return items


def pack_dataset(dataset: Dataset, out: Path | str) -> str:
    """Write a set as one safetensors file; returns the file's sha256 digest."""
    import numpy as np
    from safetensors.numpy import save

    tensors = {
        f"item.{i}": np.frombuffer(it.data, dtype=np.uint8).copy() for i, it in enumerate(dataset.items)
    }
    meta = {
        "labels": list(dataset.labels),
        "digest": dataset.digest,
        "items": [{"name": it.name, "label": it.label} for it in dataset.items],
    }
    data = save(tensors, metadata={DATASET_KEY: json.dumps(meta)})
    Path(out).write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- CLI: `deepdetect-server dataset pack|inspect` -----------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset_command", required=True)
    pack = sub.add_parser("pack", help="pack a folder or manifest into one .safetensors file")
    pack.add_argument("source", type=Path)
    pack.add_argument("--out", type=Path, required=True)
    pack.add_argument("--labels", default="real,fake", help="negative,positive (default real,fake)")
    inspect = sub.add_parser("inspect", help="print a set's counts and digest")
    inspect.add_argument("source", type=Path)
    inspect.add_argument("--labels", default="real,fake")


def parse_labels(text: str) -> tuple[str, str]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if len(parts) != 2:
        raise DatasetError(f"--labels takes negative,positive, got {text!r}")
    return parts[0], parts[1]


def run(args: argparse.Namespace) -> int:
    try:
        dataset = load_dataset(args.source, parse_labels(args.labels))
        summary = {"items": len(dataset.items), "counts": dataset.counts, "digest": dataset.digest}
        if args.dataset_command == "pack":
            summary["file_digest"] = pack_dataset(dataset, args.out)
            summary["out"] = str(args.out)
        print(json.dumps(summary))
        return 0
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
