"""The torch runtime on a GPU at full speed: fixed bucket shapes, captured CUDA graphs or torch.compile.

Eager PyTorch launches a few hundred kernels per EfficientNet forward from Python; at batch 1-32 on an
H100 the launches, not the maths, are the limit. Here each bucket of `buckets.plan_buckets` gets its own
static buffers and one captured CUDA graph (mode `graphs`), or a `torch.compile(mode="reduce-overhead")`
specialisation (mode `compile`, with dynamo's recompile limit raised to the bucket count so no bucket falls
back to eager), all warmed before ready. Per batch: copy into a pinned host buffer, one non-blocking
upload, replay, one non-blocking download into pinned memory, and one synchronisation (an event), so the
forward thread never blocks the GPU more than once. Layout is channels_last, under fp16/bf16 autocast.

Selected only when the device is CUDA; everything shape-related lives in `buckets.py`, tested on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..model import Detector
from ..preprocess import normalize_batch
from .base import as_batch, probabilities, warm_batch
from .buckets import bucket_for, plan_buckets

log = logging.getLogger("deepdetect.runtime")

GpuMode = Literal["eager", "graphs", "compile"]
_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


@dataclass
class _Slot:
    host_in: Any  # pinned uint8 (b, H, W, 3)
    dev_in: Any
    dev_out: Any
    host_out: Any  # pinned float32 (b, outputs)
    graph: Any  # torch.cuda.CUDAGraph | None
    done: Any  # torch.cuda.Event


class CudaRuntime:
    """A Detector on CUDA, run through per-bucket static buffers (and graphs or compiled code)."""

    def __init__(self, detector: Detector, max_batch_size: int, mode: GpuMode = "graphs") -> None:
        import torch

        if detector.device.type != "cuda":
            raise ValueError("CudaRuntime needs a Detector on a CUDA device")
        self.det = detector
        self.card = detector.card
        self.precision = detector.precision
        self.device_type = "cuda"
        self.threads = 0
        self.mode = mode
        self.name = f"torch-cuda-{mode}"
        self.buckets = plan_buckets(max_batch_size)
        self._torch = torch
        torch.backends.cudnn.benchmark = True  # shapes are fixed per bucket: autotune once each
        self._forward = detector.model
        if mode == "compile":
            import torch._dynamo

            limit = len(self.buckets) + 4
            for knob in ("recompile_limit", "cache_size_limit"):  # the name changed across releases
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), limit))
            self._forward = torch.compile(detector.model, mode="reduce-overhead", dynamic=False)
        self._slots: dict[int, _Slot] = {}
        self._pool = None

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        name = _DTYPES.get(self.precision)
        if name is None:
            return contextlib.nullcontext()
        # No cast cache: casts cached during a capture would be freed behind the graph's back (the CUDA
        # graphs + AMP rule in torch's docs); inside a graph the casts are replayed kernels anyway.
        return self._torch.autocast("cuda", dtype=getattr(self._torch, name), cache_enabled=False)

    def _step(self, dev_in: Any) -> Any:
        x = normalize_batch(dev_in, self.det.mean, self.det.std)  # NHWC permute: channels_last already
        with self._autocast():
            return self._forward(x).float()

    def _make_slot(self, b: int) -> _Slot:
        torch = self._torch
        size = self.card.input_size
        dev = self.det.device
        host_in = torch.empty((b, size, size, 3), dtype=torch.uint8).pin_memory()
        dev_in = torch.zeros((b, size, size, 3), dtype=torch.uint8, device=dev)
        host_out = torch.empty((b, self.card.num_outputs), dtype=torch.float32).pin_memory()
        graph = None
        with torch.inference_mode():
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(3):  # cuDNN autotuning and allocator growth happen outside the capture
                    dev_out = self._step(dev_in)
            torch.cuda.current_stream(dev).wait_stream(side)
            if self.mode == "graphs":
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    dev_out = self._step(dev_in)
                self._pool = graph.pool()  # one memory pool shared by every bucket's graph
        return _Slot(host_in, dev_in, dev_out, host_out, graph, torch.cuda.Event())

    def prepare(self) -> float:
        """Build (capture or compile) every bucket, largest first so the shared pool is sized once."""
        if self._slots:
            return 0.0
        start = time.perf_counter()
        for b in sorted(self.buckets, reverse=True):
            self._slots[b] = self._make_slot(b)
        self._torch.cuda.synchronize(self.det.device)
        log.info("gpu buckets ready", extra={"buckets": self.buckets, "mode": self.mode,
                                             "seconds": round(time.perf_counter() - start, 2)})
        return time.perf_counter() - start

    def logits(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        batch = as_batch(images)
        n = len(batch)
        if not self._slots:
            self.prepare()
        slot = self._slots[bucket_for(n, self.buckets)]
        torch = self._torch
        with torch.inference_mode():
            slot.host_in.numpy()[:n] = batch  # rows past n keep old pixels: their outputs are dropped
            slot.dev_in.copy_(slot.host_in, non_blocking=True)
            if slot.graph is not None:
                slot.graph.replay()
                out = slot.dev_out
            else:
                out = self._step(slot.dev_in)
            slot.host_out.copy_(out, non_blocking=True)
            slot.done.record()
        slot.done.synchronize()  # the one sync per batch
        return slot.host_out.numpy()[:n].copy()

    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> list[float]:
        return probabilities(self.logits(images), self.card).tolist()

    def set_threads(self, threads: int) -> None:
        """GPU work has no intra-op CPU threads to tune."""

    def warmup(self, batches: int, batch_sizes: Sequence[int] = (1,)) -> float:
        start = time.perf_counter()
        if not self._slots:
            self.prepare()
        for _ in range(max(1, batches)):
            for b in self.buckets:  # every bucket, not only the requested sizes: none is cold at ready
                self.logits(warm_batch(self.card, b))
        return time.perf_counter() - start

    def close(self) -> None:
        self._slots.clear()
        self._pool = None
        self.det.close()
