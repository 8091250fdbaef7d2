"""Pick the runtime: build the candidates the settings and device allow, check them, time them, choose.

`runtime: torch` and `runtime: onnxruntime` ask for one; `auto` takes the fastest correct one for the
device, measured here on the warm-up batch. Every non-torch candidate is checked against torch first
(`parity`): a supplied graph that disagrees, or any graph under an explicit `runtime: onnxruntime`, stops
the start-up with a StartupError; under `auto` a freshly exported graph that disagrees is dropped with a
warning (torch still serves). `precision: int8` is ONNX Runtime on CPU behind the drift gate (`int8`).

Then the CPUs are split between the chosen runtime's intra-op threads and the decode pool from measured
costs (`threads`). The whole decision is returned as a `Selection` whose `report` goes into the start-up
log line, so an operator can see what was chosen and why.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import LoadedCheckpoint
from ..config import ServerSettings
from ..errors import StartupError
from ..model import Detector, available_cpus, resolve_device
from .base import Runtime, probabilities, warm_batch
from .onnx_export import Graph, GraphCache, export_onnx, graph_key, load_or_build
from .parity import ParityReport, compare, require
from .threads import ThreadPlan, candidate_threads, plan_threads

log = logging.getLogger("deepdetect.runtime")

PARITY_BATCH = 4
TYPICAL_UPLOAD = (1024, 768)  # decode cost is measured on a photo of this size (a phone picture, scaled)


@dataclass
class Selection:
    runtime: Runtime
    decode_workers: int
    report: dict[str, Any] = field(default_factory=dict)


def effective_precision(requested: str, device_type: str) -> str:
    """fp16/bf16 need CUDA (CPU runs fp32); int8 is CPU-only (CUDA runs fp16 instead)."""
    if device_type != "cuda" and requested in ("fp16", "bf16"):
        return "fp32"
    if device_type == "cuda" and requested == "int8":
        return "fp16"
    return requested


def typical_jpeg() -> bytes:
    """A deterministic photo-like JPEG (smooth fields + texture) for timing one decode."""
    from PIL import Image

    w, h = TYPICAL_UPLOAD
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(xx / 90), 128 + 100 * np.cos(yy / 70), (xx + yy) / (w + h) * 255], -1)
    img = np.clip(base + rng.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def measure_decode(preprocess: Callable[[bytes], np.ndarray], data: bytes, reps: int = 5) -> float:
    """CPU seconds of one serving preprocess (sniff, decode, resize, crop) on one thread; the median."""
    preprocess(data)
    times = []
    for _ in range(reps):
        t0 = time.thread_time()
        preprocess(data)
        times.append(time.thread_time() - t0)
    return float(np.median(times))


def measure_forward(runtime: Runtime, batch: np.ndarray, budget_s: float = 1.5) -> float:
    """Wall seconds per image at this batch size with the runtime's current threads (best of a few)."""
    runtime.logits(batch)
    best = float("inf")
    spent, reps = 0.0, 0
    while reps < 2 or (spent < budget_s and reps < 5):
        t0 = time.perf_counter()
        runtime.logits(batch)
        dt = time.perf_counter() - t0
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best / len(batch)


class _Builder:
    """Holds what every candidate needs: the checkpoint, the torch reference, the graph cache."""

    def __init__(self, s: ServerSettings, loaded: LoadedCheckpoint, preprocess: Callable[[bytes], np.ndarray],
                 ) -> None:
        self.s = s
        self.loaded = loaded
        self.card = loaded.card
        self.preprocess = preprocess
        self.device = resolve_device(s.device)
        self.precision = effective_precision(s.precision, self.device.type)
        if self.precision != s.precision:
            log.warning("precision downgraded", extra={"requested": s.precision, "using": self.precision,
                                                       "reason": "int8 is CPU-only" if s.precision == "int8"
                                                       else "no CUDA device"})
        torch_precision = "fp32" if self.precision == "int8" else self.precision
        self.reference = Detector(self.card, loaded.tensors, str(self.device), torch_precision,
                                  s.cpu_threads or available_cpus())
        self.cache = GraphCache(s.runtime_cache_dir or s.checkpoint.parent / "runtime-cache")
        self.parity_batch = warm_batch(self.card, PARITY_BATCH)
        self.reference_logits = self.reference.logits(self.parity_batch)
        self.report: dict[str, Any] = {"requested": {"runtime": s.runtime, "precision": s.precision},
                                       "device": str(self.device), "candidates": {}}

    def supplied_graph(self) -> Path | None:
        if self.s.onnx_graph is not None:
            return self.s.onnx_graph
        beside = self.s.checkpoint.with_suffix(".onnx")
        return beside if beside.is_file() else None

    def fp32_graph(self) -> Graph:
        key = graph_key(self.card, self.loaded.digest, "fp32")
        model = self.reference.model
        return load_or_build(self.cache, key, self.loaded.digest, lambda: export_onnx(model, self.card),
                             self.supplied_graph())

    def parity(self, name: str, runtime: Runtime) -> ParityReport:
        logits = runtime.logits(self.parity_batch)
        return compare(name, self.reference_logits, logits,
                       probabilities(self.reference_logits, self.card), probabilities(logits, self.card),
                       precision=self.precision, prob_tolerance=self.s.parity_tolerance)

    def onnxruntime(self, explicit: bool) -> Runtime | None:
        graph = self.fp32_graph()
        runtime = self._ort(graph.data, "onnxruntime", "fp32")
        report = self.parity("onnxruntime", runtime)
        if not report.ok and graph.origin == "cache":
            log.warning("cached graph failed the parity check: re-exporting",
                        extra={"graph": str(graph.path)})
            self.cache.drop(graph.key)
            graph = self.fp32_graph()
            runtime = self._ort(graph.data, "onnxruntime", "fp32")
            report = self.parity("onnxruntime", runtime)
        self.report["candidates"]["onnxruntime"] = {
            "graph": graph.origin, "graph_path": str(graph.path) if graph.path else None,
            "graph_s": round(graph.seconds, 2), "parity": report.describe()}
        if report.ok:
            return runtime
        source = f"{graph.origin} graph {graph.path}" if graph.path else f"{graph.origin} graph"
        if explicit or graph.origin == "supplied":
            require(report, source)
        log.warning("onnxruntime dropped: it disagrees with torch", extra={"parity": report.describe()})
        runtime.close()
        return None

    def int8(self) -> Runtime:
        from .int8 import drift, quantize, require_gate
        from .samples import load_sample_set

        if self.s.samples is None:
            raise StartupError("precision int8 needs a sample set to calibrate on and measure drift with "
                               "(setting samples: a folder of images or a packed sample file)")
        started = time.perf_counter()
        samples = load_sample_set(self.s.samples, self.card, self.preprocess)
        fp32 = self.fp32_graph()
        key = graph_key(self.card, self.loaded.digest, f"int8-{samples.digest}")
        graph = load_or_build(self.cache, key, self.loaded.digest,
                              lambda: quantize(fp32.data, samples.calibration))
        int8_rt = self._ort(graph.data, "onnxruntime-int8", "int8")
        fp32_rt = self._ort(fp32.data, "onnxruntime", "fp32")
        fp32_parity = self.parity("onnxruntime", fp32_rt)
        require(fp32_parity, f"{fp32.origin} graph, the fp32 base of int8")
        report = drift(probabilities(fp32_rt.logits(samples.holdout), self.card),
                       probabilities(int8_rt.logits(samples.holdout), self.card),
                       samples.holdout_labels, self.s.int8_max_score_drift, self.s.int8_max_auc_drop)
        fp32_rt.close()
        self.report["candidates"]["onnxruntime-int8"] = {
            "graph": graph.origin, "graph_s": round(graph.seconds, 2), "drift": report.as_dict(),
            "gate": report.describe(), "seconds": round(time.perf_counter() - started, 2)}
        if not report.ok:
            int8_rt.close()
        require_gate(report)
        log.info("int8 passed the drift gate", extra={"drift": report.describe()})
        return int8_rt

    def torch(self) -> Runtime:
        if self.device.type == "cuda" and self.s.gpu_mode != "eager":
            from .cuda import CudaRuntime

            runtime = CudaRuntime(self.reference, self.s.max_batch_size, self.s.gpu_mode)
            runtime.prepare()
            report = self.parity(runtime.name, runtime)  # a capture or compile bug shows here
            self.report["candidates"][runtime.name] = {"parity": report.describe()}
            require(report, f"{runtime.name} against torch eager")
            return runtime
        return self.reference

    def _ort(self, graph: bytes, name: str, precision: str) -> Runtime:
        from .ort import OnnxRuntime

        return OnnxRuntime(graph, self.card, device_type=self.device.type,
                           device_index=self.device.index or 0,
                           threads=self.s.cpu_threads or available_cpus(), name=name, precision=precision)


def candidates(s: ServerSettings, device_type: str, have_ort: bool) -> list[str]:
    """Runtimes worth building for these settings on this device, in preference order for ties."""
    precision = effective_precision(s.precision, device_type)
    if precision == "int8":
        if s.runtime == "torch":
            raise StartupError("precision int8 runs on onnxruntime: set runtime to onnxruntime or auto")
        if not have_ort:
            raise StartupError("precision int8 needs the onnxruntime package")
        return ["onnxruntime-int8"]
    if s.runtime == "torch":
        return ["torch"]
    if s.runtime == "onnxruntime":
        if not have_ort:
            raise StartupError("runtime onnxruntime requested but the onnxruntime package is missing")
        return ["onnxruntime"]
    if not have_ort:
        log.warning("runtime auto: onnxruntime is not installed, torch is the only candidate")
        return ["torch"]
    if device_type == "cuda":
        from .ort import available_providers

        return ["torch", "onnxruntime"] if "CUDAExecutionProvider" in available_providers() else ["torch"]
    return ["torch", "onnxruntime"]


def build_runtime(s: ServerSettings, loaded: LoadedCheckpoint,
                  preprocess: Callable[[bytes], np.ndarray]) -> Selection:
    """Everything between a loaded checkpoint and a warmed runtime with its thread plan."""
    started = time.perf_counter()
    b = _Builder(s, loaded, preprocess)
    try:
        import onnxruntime  # noqa: F401

        have_ort = True
    except ImportError:
        have_ort = False
    wanted = candidates(s, b.device.type, have_ort)
    built: dict[str, Runtime] = {}
    for name in wanted:
        if name == "torch":
            built[name] = b.torch()
        elif name == "onnxruntime":
            rt = b.onnxruntime(explicit=s.runtime == "onnxruntime")
            if rt is not None:
                built[name] = rt
        else:
            built[name] = b.int8()
    cpus = available_cpus()
    if b.device.type == "cuda":
        chosen, plan = _pick_gpu(built, s)
    else:
        chosen, plan = _pick_cpu(built, s, b, cpus)
    for rt in built.values():
        if rt is not chosen and rt is not b.reference:
            rt.close()
    if chosen is not b.reference and not isinstance(getattr(chosen, "det", None), Detector):
        b.reference.close()  # the torch weights are not needed once another runtime serves
    chosen.set_threads(plan.threads)
    b.report.update({"runtime": chosen.name, "precision": chosen.precision, "plan": plan.as_dict(),
                     "cpus": cpus, "select_s": round(time.perf_counter() - started, 2)})
    return Selection(chosen, plan.decode_workers, b.report)


def _pick_cpu(built: dict[str, Runtime], s: ServerSettings, b: _Builder, cpus: int
              ) -> tuple[Runtime, ThreadPlan]:
    decode_s = measure_decode(preprocess=b.preprocess, data=typical_jpeg())
    batch = warm_batch(b.card, min(s.max_batch_size, 8), seed=1)
    counts = [s.cpu_threads] if s.cpu_threads else candidate_threads(cpus)
    best: tuple[Runtime, ThreadPlan] | None = None
    for name, rt in built.items():
        forward = {}
        for t in counts:
            rt.set_threads(t)
            forward[t] = measure_forward(rt, batch)
        plan = plan_threads(cpus, decode_s, forward, fixed_threads=s.cpu_threads,
                            fixed_workers=s.decode_workers)
        b.report["candidates"].setdefault(name, {}).update({
            "forward_ms_per_image": {t: round(1000 * v, 2) for t, v in forward.items()},
            "predicted_img_s": round(plan.predicted_img_s, 1)})
        if best is None or plan.predicted_img_s > best[1].predicted_img_s:
            best = (rt, plan)
    assert best is not None
    b.report["decode_ms_per_image"] = round(1000 * decode_s, 2)
    return best


def _pick_gpu(built: dict[str, Runtime], s: ServerSettings) -> tuple[Runtime, ThreadPlan]:
    """On a GPU: prepare every bucket, then the runtime with the best measured img/s at max batch."""
    best: tuple[Runtime, float] | None = None
    for rt in built.values():
        prepare = getattr(rt, "prepare", None)
        if prepare is not None:
            prepare()
        batch = warm_batch(rt.card, s.max_batch_size, seed=1)
        rate = 1.0 / measure_forward(rt, batch)
        if best is None or rate > best[1]:
            best = (rt, rate)
    assert best is not None
    workers = s.decode_workers or available_cpus()
    return best[0], ThreadPlan(0, workers, best[1], "forward")
