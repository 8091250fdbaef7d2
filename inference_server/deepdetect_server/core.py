"""The dataplane: images in, verdicts out, with no HTTP in sight (kserve's `dataplane.py` split).

The core owns the model's lifecycle (load -> warm -> ready -> draining -> stopped), the decode pool,
the batcher and admission. Routes in `api/` only translate HTTP to these calls and back, so every rule
(auth, limits, deadlines, readiness) lives here once and is testable without a socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import __version__
from .auth import ApiKeyAuth, NoAuth
from .batcher import Batcher
from .checkpoint import LoadedCheckpoint, ModelCard, check_card_matches, load_checkpoint
from .config import ServerSettings
from .errors import DeadlineExceeded, ModelNotFound, NotReady
from .media import sniff
from .metrics import Metrics
from .preprocess import Preprocessor
from .runtimes.base import Runtime

if TYPE_CHECKING:
    from .runtimes.select import Selection

log = logging.getLogger("deepdetect.core")

State = Literal["new", "loading", "ready", "draining", "stopped"]


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


@dataclass(frozen=True)
class Verdict:
    """One piece of media, judged: the body /v1/detect and a job answer (less the request's latency)."""

    body: dict[str, Any]
    cost: int  # media units: 1 for an image (a video: the frames it was sampled into)


class Core:
    """One model, served. Create it, `await start()`, call `predict`, `await stop()`."""

    def __init__(self, settings: ServerSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.state: State = "new"
        self.exit_by: float | None = None  # monotonic deadline set by SIGTERM
        self.card: ModelCard | None = None
        self.digest = ""
        self.auth: ApiKeyAuth | NoAuth = NoAuth()
        self.detector: Runtime | None = None
        self.runtime_report: dict[str, Any] = {}
        self._preprocess: Preprocessor | None = None
        self._batcher: Batcher[np.ndarray, float] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.metrics.bind(depth=lambda: float(self._batcher.depth if self._batcher else 0),
                          ready=lambda: float(self.ready))

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Model loaded, warmed, and not draining: the only state that takes traffic."""
        return self.state == "ready" and self.detector is not None

    @property
    def card_hash(self) -> str:
        """sha256 of the card (preprocessing, labels, threshold...): part of every result-cache key."""
        assert self.card is not None
        return hashlib.sha256(self.card.model_dump_json().encode()).hexdigest()

    @property
    def threshold(self) -> float:
        assert self.card is not None
        return self.settings.threshold if self.settings.threshold is not None else self.card.threshold

    async def start(self) -> None:
        s = self.settings
        self.state = "loading"
        if s.auth_mode == "apiKey":
            self.auth = ApiKeyAuth.from_file(s.api_key_file)
        started = time.perf_counter()
        loaded = await asyncio.to_thread(load_checkpoint, s.checkpoint, s.checkpoint_sha256)
        check_card_matches(loaded.card, s.expect_architecture, s.expect_input_size)
        self.card, self.digest = loaded.card, loaded.digest
        self._preprocess = Preprocessor(self.card, s.max_image_pixels)
        selection = await asyncio.to_thread(self._select_runtime, loaded)
        del loaded  # the runtime holds its own copy of the weights now
        self.detector, self.runtime_report = selection.runtime, selection.report
        self._pool = ThreadPoolExecutor(max_workers=selection.decode_workers,
                                        thread_name_prefix="deepdetect-decode")
        sizes = (1, s.max_batch_size) if self.detector.device_type == "cuda" else (1,)
        warm_s = await asyncio.to_thread(self.detector.warmup, s.warmup_batches, sizes)
        self._batcher = Batcher(self.detector.predict, max_batch_size=s.max_batch_size,
                                max_delay_ms=s.max_delay_ms, max_queue=s.max_queue, observer=self.metrics)
        await self._batcher.start()
        self.metrics.model_info.labels(name=s.model_name, digest=self.digest,
                                       architecture=self.card.architecture).set(1)
        self.metrics.runtime_info.labels(runtime=self.detector.name, precision=self.detector.precision,
                                         threads=str(self.detector.threads)).set(1)
        if self.detector.device_type == "cuda":
            self.metrics.bind_gpu(self._cuda_index())
        if self.state == "loading":  # a SIGTERM during start-up keeps us draining
            self.state = "ready"
        log.info("model ready", extra={
            "model": s.model_name, "digest": self.digest, "architecture": self.card.architecture,
            "device": self.runtime_report.get("device"), "runtime": self.detector.name,
            "precision": self.detector.precision, "selection": self.runtime_report,
            "decode": self.card.decode, "load_s": round(time.perf_counter() - started, 3),
            "warmup_s": round(warm_s, 3)})

    def _select_runtime(self, loaded: LoadedCheckpoint) -> Selection:
        from .runtimes.select import build_runtime

        assert self._preprocess is not None
        return build_runtime(self.settings, loaded, self._preprocess)

    def _cuda_index(self) -> int:
        device = str(self.runtime_report.get("device", "cuda:0"))
        return int(device.split(":")[1]) if ":" in device else 0

    def begin_drain(self, exit_by: float | None = None) -> None:
        """SIGTERM: stop being ready at once; accepted work still finishes, before `exit_by` (monotonic)."""
        if exit_by is not None:
            self.exit_by = exit_by
        if self.state in ("ready", "loading", "new"):
            self.state = "draining"
            log.info("draining: readiness is now false")

    def stop_budget(self, default_s: float) -> float:
        """Seconds left for the final stop: what remains of the grace period, when a signal set one."""
        if self.exit_by is None:
            return default_s
        return max(0.0, self.exit_by - time.monotonic() - 0.2)

    async def stop(self, grace_s: float = 10.0) -> None:
        self.begin_drain()
        if self._batcher is not None:
            await self._batcher.stop(grace_s)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self.detector is not None:
            self.detector.close()
            self.detector = None
        self.state = "stopped"
        log.info("stopped")

    # --- requests --------------------------------------------------------------------------------------

    def authorize(self, authorization: str | None) -> str:
        """The tenant (the API key's name) of a request; Unauthorized without a valid key."""
        return self.auth.check(authorization)

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.settings.model_name:
            raise ModelNotFound(f"unknown model {name!r}: this server serves {self.settings.model_name!r}")
        if version is not None and self.card is not None and version != self.card.version:
            raise ModelNotFound(f"unknown version {version!r} of model {name!r}")

    def check_media(self, data: bytes) -> None:
        """Refuse, before it is queued as a job, what `verdict` could never score (415, 400)."""
        sniff(data)

    def media_cost(self, data: bytes, params: Mapping[str, Any]) -> int:
        """Media units `verdict` will spend on this input, known before it runs (rate limits charge it)."""
        return 1

    async def verdict(self, data: bytes, params: Mapping[str, Any] | None = None,
                      timeout_s: float | None = None) -> Verdict:
        """The detection entry point of /v1/detect and jobs: media bytes (+ parameters) -> verdict."""
        [pred] = await self.predict([data], timeout_s=timeout_s)
        body = {"label": pred.label, "score": pred.score, "threshold": self.threshold,
                "model": {"name": self.settings.model_name, "digest": self.digest}}
        return Verdict(body, cost=1)

    async def predict(self, images: list[bytes], timeout_s: float | None = None) -> list[Prediction]:
        """Decode (thread pool), batch, infer; all within `timeout_s` (default `request_timeout_s`)."""
        # Draining still serves: the load balancer may send a few more requests before it sees not-ready.
        if self.state not in ("ready", "draining") or self._batcher is None or self._preprocess is None:
            raise NotReady("model is not ready" if self.state != "stopped" else "server is shutting down")
        reservation = self._batcher.reserve(len(images))  # before any decoding: shed load cheaply
        loop = asyncio.get_running_loop()
        timeout_s = timeout_s or self.settings.request_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                arrays = await asyncio.gather(
                    *(loop.run_in_executor(self._pool, self._preprocess, data) for data in images)
                )
                scores = await reservation.submit(arrays)
        except TimeoutError:
            raise DeadlineExceeded(f"request took longer than {timeout_s:g}s: retry later") from None
        finally:
            reservation.release()
        return [self._verdict(score) for score in scores]

    def _verdict(self, score: float) -> Prediction:
        assert self.card is not None
        label = self.card.positive_label if score >= self.threshold else self.card.negative_label
        self.metrics.predictions.labels(label=label).inc()
        return Prediction(label=label, score=float(score))

    # --- descriptions ----------------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "deepdetect", "version": __version__, "extensions": ["binary_tensor_data"]}

    def model_metadata(self) -> dict[str, Any]:
        if self.card is None:
            raise NotReady("model is not loaded")
        return {
            "name": self.settings.model_name,
            "versions": [self.card.version],
            "platform": "pytorch_timm",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "score", "datatype": "FP32", "shape": [-1]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": {
                "digest": self.digest,
                "architecture": self.card.architecture,
                "labels": self.card.labels,
                "positive_label": self.card.positive_label,
                "threshold": self.threshold,
                "input_size": self.card.input_size,
                "max_batch_inputs": self.settings.max_batch_inputs,
            },
        }
