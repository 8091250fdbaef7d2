"""The torch runtime: a timm model built from the card, run in eval mode under `torch.inference_mode`.

`Detector` knows devices and precision and nothing about HTTP or queues (kserve's `Model` split). It takes
uint8 NHWC batches, normalises them on the device (four times less data to move than float32), and returns
the probability of the card's positive label for each image, for one-logit (sigmoid) and two-class
(softmax) heads alike. It is the `torch` runtime of `runtimes/` and the reference every other runtime is
checked against.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .checkpoint import ModelCard
from .errors import CheckpointError
from .preprocess import normalize_batch
from .runtimes.base import probabilities

log = logging.getLogger("deepdetect.model")

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def available_cpus() -> int:
    """CPUs this process may really use: affinity, capped by a cgroup CPU quota (a pod's CPU limit).

    torch defaults to every core of the node; under a 4-CPU limit on a 64-core node that oversubscribes the
    quota and the forward pass stalls on throttling and spinning threads.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "400000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {name!r} requested but CUDA is not available")
    return device


class Detector:
    """A loaded, eval-mode timm model plus the card's normalisation constants (a `Runtime`)."""

    name = "torch"

    def __init__(
        self,
        card: ModelCard,
        tensors: dict[str, torch.Tensor],
        device: str = "auto",
        precision: str = "fp32",
        cpu_threads: int = 0,
    ) -> None:
        import timm

        self.card = card
        self.device = resolve_device(device)
        # OpenMP thread counts are per calling thread: predict() applies this on the thread it runs on.
        # Default: half the CPUs. The decode pool and the event loop need the rest; with every CPU given
        # to torch the bench measured the forward and decode threads stalling each other (bench/README.md).
        default_threads = max(1, available_cpus() // 2)
        self.cpu_threads = (cpu_threads or default_threads) if self.device.type == "cpu" else 0
        self.precision = precision
        if self.device.type != "cuda" and precision != "fp32":
            # Half precision on CPU is slower and less exact than fp32: say so rather than fail.
            log.warning("precision downgraded", extra={"requested": precision, "using": "fp32",
                                                       "reason": "no CUDA device"})
            self.precision = "fp32"
        model = timm.create_model(card.architecture, pretrained=False, num_classes=card.num_outputs)
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint tensors do not fit {card.architecture}: {exc}") from exc
        model.eval().to(self.device)
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.device_type = self.device.type
        self.mean = torch.tensor(card.mean, device=self.device)
        self.std = torch.tensor(card.std, device=self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.device.type == "cuda" and self.precision in _DTYPES:
            return torch.autocast("cuda", dtype=_DTYPES[self.precision])
        return contextlib.nullcontext()

    @property
    def threads(self) -> int:
        return self.cpu_threads

    def set_threads(self, threads: int) -> None:
        if self.device.type == "cpu":
            self.cpu_threads = max(1, threads)

    def logits(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, num_outputs) float32 logits for a uint8 NHWC batch."""
        if self.cpu_threads and torch.get_num_threads() != self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        if isinstance(images, torch.Tensor):
            batch = images
        else:
            batch = torch.from_numpy(images if isinstance(images, np.ndarray) else np.stack(images))
        with torch.inference_mode():
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            x = normalize_batch(batch, self.mean, self.std)
            if self.device.type != "cuda":
                x = x.contiguous()
            with self._autocast():
                out = self.model(x)
            return out.float().cpu().numpy()

    def predict(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> list[float]:
        """Probability of the positive label for each uint8 HWC image of the batch."""
        return probabilities(self.logits(images), self.card).tolist()

    def warmup(self, batches: int, batch_sizes: Sequence[int] = (1,)) -> float:
        """Run dummy batches so the first real request does not pay for lazy init; returns seconds."""
        start = time.perf_counter()
        size = self.card.input_size
        for _ in range(batches):
            for n in batch_sizes:
                self.predict(torch.zeros((n, size, size, 3), dtype=torch.uint8))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def close(self) -> None:
        """Drop the weights; on CUDA give the memory back to the driver."""
        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
