"""The ONNX graph of a checkpoint: supplied next to it, or exported once and cached by checkpoint digest.

The exported graph takes what the decode pool produces (uint8 NHWC) and does the card's normalisation
itself, so the runtime hands ONNX Runtime the batch as it is and ORT fuses the arithmetic. Export costs
seconds (a B4 takes longer), so the graph is cached on the pod's volume under a key made of the checkpoint
digest and everything else the graph depends on (card numbers, exporter and opset, variant such as int8 and
its calibration set). A sidecar records the graph's own sha256: a truncated or replaced file is a miss, and
a changed checkpoint has another key, so a stale graph is never reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..checkpoint import ModelCard
from ..errors import StartupError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("deepdetect.runtime")

OPSET = 17
EXPORT_RECIPE = 1  # bump when the exported graph's shape changes (inputs, normalisation, outputs)
INPUT_NAME = "images"
OUTPUT_NAME = "logits"

Origin = Literal["supplied", "cache", "export"]


@dataclass(frozen=True)
class Graph:
    """ONNX bytes and where they came from; `seconds` is what getting them cost."""

    data: bytes
    origin: Origin
    seconds: float
    path: Path | None  # the supplied file or the cache entry; None when the cache was unavailable
    key: str


def graph_key(card: ModelCard, digest: str, variant: str = "fp32") -> str:
    """File-name-safe key: checkpoint digest + a hash of everything else the graph depends on."""
    import torch

    recipe = {
        "recipe": EXPORT_RECIPE, "opset": OPSET, "torch": torch.__version__, "variant": variant,
        "card": card.model_dump(include={"architecture", "input_size", "num_outputs", "mean", "std"}),
    }
    extra = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return f"{digest.removeprefix('sha256:')}-{extra}"


def export_module(model: torch.nn.Module, card: ModelCard) -> torch.nn.Module:
    """The graph's computation: uint8 NHWC -> ToTensor + Normalize -> model -> logits."""
    import torch

    class _Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            # (x / 255 - mean) / std == (x - 255 mean) / (255 std): one subtract and one divide.
            self.register_buffer("mean", torch.tensor(card.mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(card.std).view(1, 3, 1, 1) * 255.0)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float()
            return self.model((x - self.mean) / self.std)

    return _Exported().eval()


def export_onnx(model: torch.nn.Module, card: ModelCard) -> bytes:
    """TorchScript-based export (dynamo=False: exact for timm CNNs here), dynamic batch axis."""
    import torch

    module = export_module(model, card)
    device = next(model.parameters()).device
    dummy = torch.zeros((2, card.input_size, card.input_size, 3), dtype=torch.uint8, device=device)
    buf = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which does not yet export these
        # models as exactly (bench/README.md); the warning is known and says nothing per start.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (dummy,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return buf.getvalue()


class GraphCache:
    """`<dir>/<key>.onnx` plus `<key>.json` (checkpoint digest, graph sha256); writes are atomic."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory if directory is not None and _writable(directory) else None
        if directory is not None and self.directory is None:
            log.warning("runtime cache unavailable: graphs are rebuilt on every start",
                        extra={"cache_dir": str(directory)})

    def get(self, key: str) -> tuple[bytes, Path] | None:
        if self.directory is None:
            return None
        graph, meta = self.directory / f"{key}.onnx", self.directory / f"{key}.json"
        try:
            data = graph.read_bytes()
            recorded = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if recorded.get("graph_sha256") != hashlib.sha256(data).hexdigest() or recorded.get("key") != key:
            log.warning("runtime cache entry damaged: rebuilding it", extra={"graph": str(graph)})
            return None
        return data, graph

    def put(self, key: str, data: bytes, digest: str) -> Path | None:
        if self.directory is None:
            return None
        graph = self.directory / f"{key}.onnx"
        try:
            _atomic_write(graph, data)
            meta = {"key": key, "checkpoint_digest": digest, "graph_sha256": hashlib.sha256(data).hexdigest()}
            _atomic_write(self.directory / f"{key}.json", json.dumps(meta).encode())
        except OSError as exc:
            log.warning("runtime cache write failed", extra={"graph": str(graph), "error": str(exc)})
            return None
        return graph

    def drop(self, key: str) -> None:
        if self.directory is not None:
            for suffix in (".json", ".onnx"):
                (self.directory / f"{key}{suffix}").unlink(missing_ok=True)


def load_or_build(
    cache: GraphCache, key: str, digest: str, build: Callable[[], bytes], supplied: Path | None = None,
) -> Graph:
    """The supplied graph when there is one, else the cache entry, else `build()` (then cached)."""
    started = time.perf_counter()
    if supplied is not None:
        try:
            data = supplied.read_bytes()
        except OSError as exc:
            raise StartupError(f"cannot read the supplied ONNX graph {supplied}: {exc.strerror}") from exc
        return Graph(data, "supplied", time.perf_counter() - started, supplied, key)
    hit = cache.get(key)
    if hit is not None:
        return Graph(hit[0], "cache", time.perf_counter() - started, hit[1], key)
    data = build()
    path = cache.put(key, data, digest)
    return Graph(data, "export", time.perf_counter() - started, path, key)


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
