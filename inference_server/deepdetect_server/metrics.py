"""Prometheus metrics, named as docs/CONTRACTS.md lists them, in a registry per app.

A per-app `CollectorRegistry` (not the process-global one) lets tests and benchmarks build several apps in
one process without "Duplicated timeseries" errors. Route labels use the route *template*
(`/v2/models/{name}/infer`), never the raw path, so a scanner cannot blow up cardinality.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "deepdetect_"
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """All server metrics; also the batcher's `BatchObserver`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(f"{PREFIX}requests", "HTTP requests by route template and status",
                                ["route", "status"], registry=r)
        self.request_duration = Histogram(f"{PREFIX}request_duration_seconds", "HTTP request latency",
                                          ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(f"{PREFIX}queue_depth", "images admitted, waiting for a batch", registry=r)
        self.queue_wait = Histogram(f"{PREFIX}queue_wait_seconds", "time an image waited for its batch",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{PREFIX}batch_size", "images per forward pass",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram(f"{PREFIX}inference_seconds", "forward pass time per batch",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.predictions = Counter(f"{PREFIX}predictions", "verdicts by label", ["label"], registry=r)
        self.model_info = Gauge(f"{PREFIX}model_info", "the served model (value is always 1)",
                                ["name", "digest", "architecture"], registry=r)
        self.runtime_info = Gauge(f"{PREFIX}runtime_info", "the runtime serving the model (always 1)",
                                  ["runtime", "precision", "threads"], registry=r)
        self.model_ready = Gauge(f"{PREFIX}model_ready", "1 when loaded, warmed and not draining", registry=r)
        self.inflight = Gauge(f"{PREFIX}inflight_requests", "HTTP requests being served", registry=r)
        self.gpu_memory = Gauge(f"{PREFIX}gpu_memory_bytes", "CUDA memory allocated by this process",
                                ["device"], registry=r)

    def bind(self, depth: Callable[[], float], ready: Callable[[], float]) -> None:
        """Read queue depth and readiness at scrape time instead of pushing every change."""
        self.queue_depth.set_function(depth)
        self.model_ready.set_function(ready)

    def bind_gpu(self, device_index: int) -> None:
        import torch

        self.gpu_memory.labels(device=f"cuda:{device_index}").set_function(
            lambda: float(torch.cuda.memory_allocated(device_index))
        )

    def batch_done(self, size: int, queue_waits: Sequence[float], inference_s: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(inference_s)
        for wait in queue_waits:
            self.queue_wait.observe(wait)

    def render(self) -> bytes:
        return generate_latest(self.registry)
