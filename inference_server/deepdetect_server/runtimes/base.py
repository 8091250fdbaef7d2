"""What every runtime is to the server: uint8 NHWC batch in, positive-label probabilities out.

The shape is kserve's `Model` (load, ready, predict) cut to what the batcher calls. Logits and the
probability rule live here once, so torch, ONNX Runtime and int8 turn logits into scores the same way and
the parity check compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..checkpoint import ModelCard

@runtime_checkable
class Runtime(Protocol):
    """A loaded model that scores batches. `name` says which runtime (torch, onnxruntime, ...)."""

    name: str
    card: ModelCard
    precision: str  # the precision it really runs in (fp16 asked on CPU runs fp32)
    device_type: str  # "cpu" or "cuda"
    threads: int  # intra-op threads on CPU (0 on GPU)

    def logits(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, num_outputs) float32 raw model outputs."""
        ...

    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> list[float]:
        """Probability of the positive label for each image."""
        ...

    def set_threads(self, threads: int) -> None:
        """Intra-op threads from now on (CPU); the thread planner calls it before ready."""
        ...

    def warmup(self, batches: int, batch_sizes: Sequence[int] = (1,)) -> float:
        """Run dummy batches so the first request pays for no lazy init; returns seconds."""
        ...

    def close(self) -> None: ...


def as_batch(images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """One contiguous uint8 NHWC array (the decode pool hands over a list of HWC arrays)."""
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(images)
    return np.stack(images)


def probabilities(logits: np.ndarray, card: ModelCard) -> np.ndarray:
    """Positive-label probability: sigmoid of a single logit, or softmax over two (float64 for stability)."""
    z = np.asarray(logits, dtype=np.float64)
    if card.num_outputs == 1:
        return 1.0 / (1.0 + np.exp(-z[:, 0]))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, card.positive_index] / e.sum(axis=1)


def warm_batch(card: ModelCard, n: int, seed: int = 0) -> np.ndarray:
    """n deterministic image-like uint8 frames: smooth colour fields plus noise, never all zeros.

    Zeros would make a weak parity check (every model maps a constant image to nearly the same logits);
    these exercise every channel and a spread of values.
    """
    rng = np.random.default_rng(seed)
    size = card.input_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([a * xx, b * yy, c * (1 - xx) * yy], axis=-1) * 255
        noisy = base + rng.normal(0, 24, (size, size, 3))
        out[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out
