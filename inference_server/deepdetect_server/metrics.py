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
_JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


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
        # Media pipeline: faces found ratio = frames_with_face / frames_sampled
        self.media = Counter(f"{PREFIX}media", "media scored, by type", ["media"], registry=r)
        self.frames_decoded = Counter(f"{PREFIX}video_frames_decoded", "video frames decoded (sampled or "
                                      "decoded on the way to a sample)", registry=r)
        self.frames_sampled = Counter(f"{PREFIX}frames_sampled", "pictures judged: sampled frames and "
                                      "images of face cards", registry=r)
        self.frames_with_face = Counter(f"{PREFIX}frames_with_face",
                                        "sampled pictures where a face was found", registry=r)
        self.decode_seconds = Histogram(f"{PREFIX}decode_seconds", "decode time per item (a video: all its "
                                        "samples)", ["media"], buckets=_LATENCY_BUCKETS, registry=r)
        self.decode_workers_replaced = Counter(f"{PREFIX}decode_workers_replaced", "video decode workers "
                                               "killed (deadline, crash) and replaced", registry=r)
        # Tenants and limits: labelled by the API key's name, never the key.
        self.tenant_requests = Counter(f"{PREFIX}tenant_requests", "authenticated requests by tenant",
                                       ["tenant", "status"], registry=r)
        self.rate_limited = Counter(f"{PREFIX}rate_limited", "requests refused with 429, by tenant and limit",
                                    ["tenant", "limit"], registry=r)
        # Result cache: hit ratio = hit / (hit + miss); coalesced = waited for an identical miss in flight.
        self.cache_lookups = Counter(f"{PREFIX}cache_lookups", "result cache lookups by outcome",
                                     ["result"], registry=r)
        # Redis
        self.redis_up = Gauge(f"{PREFIX}redis_up", "1 while the last Redis call succeeded", registry=r)
        self.redis_errors = Counter(f"{PREFIX}redis_errors", "failed or skipped Redis calls by component",
                                    ["component"], registry=r)
        # Jobs
        self.job_transitions = Counter(f"{PREFIX}job_transitions", "job state changes made by this replica",
                                       ["state"], registry=r)
        self.jobs = Gauge(f"{PREFIX}jobs", "queued and running jobs in the store (all replicas)",
                          ["state"], registry=r)
        self.job_latency = Histogram(f"{PREFIX}job_latency_seconds", "submission to final state",
                                     ["state"], buckets=_JOB_BUCKETS, registry=r)
        self.job_run = Histogram(f"{PREFIX}job_run_seconds", "claim to final state on this replica",
                                 buckets=_JOB_BUCKETS, registry=r)
        self.callbacks = Counter(f"{PREFIX}callbacks", "callback deliveries: delivered, retried, failed",
                                 ["result"], registry=r)

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
