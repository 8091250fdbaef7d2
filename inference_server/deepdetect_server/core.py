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
from .decode_workers import DecodeWorkers
from .errors import BadRequest, DeadlineExceeded, MediaTooLarge, ModelNotFound, NotReady, UnsupportedMediaType
from .inputs import PictureInputs, picture_inputs, video_inputs
from .judgement import face_body
from .media import decode_rgb, open_image, sniff
from .metrics import Metrics
from .preprocess import Preprocessor
from .runtimes.base import Runtime
from .video import Container, VideoLimits, sniff_video

if TYPE_CHECKING:
    from .runtimes.select import Selection

log = logging.getLogger("deepdetect.core")

State = Literal["new", "loading", "ready", "draining", "stopped"]
MediaKind = Literal["image", "video"]


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
        self.video_workers: DecodeWorkers | None = None
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
        if s.video_enabled:
            self.video_workers = DecodeWorkers(s.video_workers, s.video_worker_memory_mb,
                                               on_replace=self.metrics.decode_workers_replaced.inc)
            await self.video_workers.start()
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
        if self.video_workers is not None:
            await self.video_workers.stop()
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

    def classify(self, data: bytes) -> tuple[MediaKind, Container | None]:
        """Image or video, from the bytes; 415/413/400 for what could never be scored, before any work."""
        fmt = sniff_video(data)
        if fmt is None:
            sniff(data)
            return "image", None
        if not self.settings.video_enabled:
            raise UnsupportedMediaType("video is not enabled on this server (video_enabled: false)")
        if len(data) > self.settings.max_video_bytes:
            limit = self.settings.max_video_bytes
            raise MediaTooLarge(f"video is {len(data)} bytes, over the limit of {limit} (max_video_mb): "
                                "refused before opening")
        return "video", fmt

    def check_media(self, data: bytes) -> None:
        """Refuse, before it is queued as a job, what `verdict` could never score (415, 413, 400)."""
        self.classify(data)

    def frames_for(self, params: Mapping[str, Any]) -> int:
        """Frames to sample: the card's default, capped by `max_video_frames`; a request may ask fewer."""
        if self.card is None:
            raise NotReady("model is not loaded")
        default = min(self.card.aggregation.frames, self.settings.max_video_frames)
        raw = params.get("max_frames")
        if raw is None or raw == "":
            return default
        try:
            asked = int(raw)
        except (TypeError, ValueError):
            raise BadRequest(f"max_frames must be an integer, got {raw!r}") from None
        if asked < 1:
            raise BadRequest("max_frames must be at least 1")
        return min(asked, default)

    def media_cost(self, data: bytes, params: Mapping[str, Any]) -> int:
        """Media units `verdict` will spend on this input, known before it runs (rate limits charge it)."""
        kind, _ = self.classify(data)
        return self.frames_for(params) if kind == "video" else 1

    def video_limits(self) -> VideoLimits:
        s = self.settings
        return VideoLimits(s.max_video_seconds, s.max_video_pixels, s.max_video_fps, s.max_video_streams)

    async def verdict(self, data: bytes, params: Mapping[str, Any] | None = None,
                      timeout_s: float | None = None) -> Verdict:
        """The detection entry point of /v1/detect, v2 and jobs: media bytes (+ parameters) -> verdict."""
        params = params or {}
        kind, fmt = self.classify(data)
        if self.card is None:
            raise NotReady("model is not ready" if self.state != "stopped" else "server is shutting down")
        if kind == "image" and self.card.faces is None:  # the whole-picture path, batched as before
            [pred] = await self.predict([data], timeout_s=timeout_s)
            self.metrics.media.labels(media="image").inc()
            body = {"label": pred.label, "score": pred.score, "threshold": self.threshold,
                    "model": {"name": self.settings.model_name, "digest": self.digest}}
            return Verdict(body, cost=1)
        frames = self.frames_for(params) if kind == "video" else 1
        timeout_s = timeout_s or self.settings.request_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                pictures = await self._pictures(kind, fmt, data, frames)
                arrays = [arr for pic in pictures for _, arr in pic.inputs]
                scores = await self._score(arrays) if arrays else []
        except TimeoutError:
            raise DeadlineExceeded(f"request took longer than {timeout_s:g}s: retry later") from None
        body = face_body(pictures, scores, self.card, self.threshold, kind)
        self._count(body)
        body["model"] = {"name": self.settings.model_name, "digest": self.digest}
        return Verdict(body, cost=len(pictures))

    async def _pictures(self, kind: MediaKind, fmt: Container | None, data: bytes, frames: int
                        ) -> list[PictureInputs]:
        if self.state not in ("ready", "draining") or self._batcher is None or self._preprocess is None:
            raise NotReady("model is not ready" if self.state != "stopped" else "server is shutting down")
        self._batcher.reserve(frames).release()  # shed load before decoding: refuses when the queue is full
        self.metrics.media.labels(media=kind).inc()
        if kind == "image":
            loop = asyncio.get_running_loop()
            return [await loop.run_in_executor(self._pool, self._image_inputs, data)]
        assert self.video_workers is not None and fmt is not None and self.card is not None
        job = (video_inputs, (data, fmt, self.video_limits(), frames, self.card.model_dump_json()))
        pictures, decoded, decode_s = await self.video_workers.run(job, self.settings.video_decode_timeout_s)
        self.metrics.frames_decoded.inc(decoded)
        self.metrics.decode_seconds.labels(media="video").observe(decode_s)
        return pictures

    def _image_inputs(self, data: bytes) -> PictureInputs:
        started = time.perf_counter()
        assert self.card is not None and self._preprocess is not None
        rgb, _ = decode_rgb(open_image(data, self.settings.max_image_pixels))
        pic = picture_inputs(np.asarray(rgb), self.card, self._preprocess)
        self.metrics.decode_seconds.labels(media="image").observe(time.perf_counter() - started)
        return pic

    async def _score(self, arrays: list[np.ndarray]) -> list[float]:
        """All crops of one request in one reservation: they join batches with every other request's."""
        assert self._batcher is not None
        reservation = self._batcher.reserve(len(arrays))
        try:
            return [float(x) for x in await reservation.submit(arrays)]
        finally:
            reservation.release()

    def _count(self, body: dict[str, Any]) -> None:
        self.metrics.frames_sampled.inc(body["frames_sampled"])
        self.metrics.frames_with_face.inc(sum(1 for f in body["frames"] if f["faces"]))
        label = body["label"] if body["outcome"] == "scored" else "no_face"
        self.metrics.predictions.labels(label=label).inc()

    async def predict_many(self, items: list[bytes]) -> list[Prediction | None]:
        """v2 infer: plain images batched as one request; videos and face cards through `verdict` each
        (None: no face was found)."""
        if self.card is None:
            raise NotReady("model is not ready")
        if self.card.faces is None and all(self.classify(d)[0] == "image" for d in items):
            return list(await self.predict(items))
        verdicts = await asyncio.gather(*(self.verdict(d) for d in items))
        return [Prediction(v.body["label"], v.body["score"]) if v.body["score"] is not None else None
                for v in verdicts]

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
