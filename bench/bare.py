"""The server's own compute with nothing around it: the "bare" baseline and the raw per-runtime benchmark.

`BareRunner` is system (c) of `bench/server.py`: the runtime the server would choose for the same
settings (`runtimes.select.build_runtime`: same candidates, parity check, thread plan and decode pool size)
and the server's own `Preprocessor`, in the best loop there is without HTTP: while batch k runs the forward
pass, batch k+1 is already decoding on the pool (a one-batch-deep pipeline, as the server overlaps the two
under load). No HTTP, no queue, no event loop: serving overhead is what the served number loses against it.

`raw` (CLI subcommand) times each runtime's `predict` from a host uint8 batch (upload, normalise, forward,
scores: the forward thread's call) per batch size, and its p50 latency at batch 1: the ceiling any server
on that card can reach. On a GPU the runtimes are torch eager, torch with captured CUDA graphs per bucket,
(optionally torch.compile) and ONNX Runtime's CUDA provider when installed; on CPU torch eager and ONNX
Runtime. `bench/gpu.sh` runs it for EfficientNet-B4 at 380 px; `--device cpu` with a tiny model smoke-tests
it anywhere. Everything uses random-init checkpoints built by the server's checkpoint module: no downloads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BareResult:
    """One bare measurement: `latencies_s` is, per image, decode start to scores of the batch it was in."""

    images: int
    seconds: float
    latencies_s: list[float]
    batch_size: int


def make_checkpoint(path: Path, arch: str, input_size: int, decode: str = "full") -> str:
    """A random-init checkpoint whose card comes from timm's data config for `arch`; returns its digest."""
    from deepdetect_server.checkpoint import card_for_architecture, create_checkpoint

    card = card_for_architecture(arch, input_size, decode=decode)
    digest, _ = create_checkpoint(path, card)
    return digest


class BareRunner:
    """The runtime the server would pick for these settings, plus its Preprocessor, run by `run`."""

    def __init__(self, checkpoint: Path | str, *, decode_workers: int = 0, cpu_threads: int = 0,
                 device: str = "cpu", precision: str = "fp32", runtime: str = "auto",
                 samples: Path | None = None, max_batch_size: int = 32, max_pixels: int = 40_000_000) -> None:
        """0 for `decode_workers` / `cpu_threads` means what the server plans from measured costs."""
        from deepdetect_server.checkpoint import load_checkpoint
        from deepdetect_server.config import ServerSettings
        from deepdetect_server.preprocess import Preprocessor
        from deepdetect_server.runtimes.select import build_runtime

        settings = ServerSettings(checkpoint=Path(checkpoint), device=device, precision=precision,
                                  runtime=runtime, samples=samples, cpu_threads=cpu_threads,
                                  decode_workers=decode_workers, max_batch_size=max_batch_size,
                                  max_image_pixels=max_pixels)
        loaded = load_checkpoint(checkpoint)
        self.preprocess = Preprocessor(loaded.card, max_pixels)
        selection = build_runtime(settings, loaded, self.preprocess)
        self.runtime = selection.runtime
        self.report = selection.report
        self.pool = ThreadPoolExecutor(max_workers=selection.decode_workers, thread_name_prefix="bare-decode")

    def _decode(self, images: Sequence[bytes], start: int, n: int) -> tuple[float, list[Future[Any]]]:
        chunk = [images[(start + k) % len(images)] for k in range(n)]
        return time.perf_counter(), [self.pool.submit(self.preprocess, data) for data in chunk]

    def run(self, images: Sequence[bytes], *, batch_size: int, requests: int, warmup: int) -> BareResult:
        """`requests` images in batches, decoding batch k+1 while batch k runs the forward pass."""
        total = max(1, warmup // batch_size) * batch_size + requests
        timed_from = total - requests
        latencies: list[float] = []
        pending = self._decode(images, 0, batch_size)
        t_start = time.perf_counter()
        done = 0
        while done < total:
            submitted, futures = pending
            arrays = [f.result() for f in futures]
            if done + batch_size < total:
                pending = self._decode(images, done + batch_size, batch_size)
            self.runtime.predict(arrays)
            finished = time.perf_counter()
            done += batch_size
            if done - batch_size == timed_from:
                t_start = submitted
            if done > timed_from:
                latencies.extend([finished - submitted] * batch_size)
        seconds = time.perf_counter() - t_start
        return BareResult(images=len(latencies), seconds=seconds, latencies_s=latencies,
                          batch_size=batch_size)

    def close(self) -> None:
        self.pool.shutdown()
        self.runtime.close()


# --- raw: each runtime's predict from host memory ----------------------------------------------------------


def raw_runtimes(checkpoint: Path, *, device: str, precision: str, max_batch: int, cpu_threads: int,
                 names: Sequence[str]) -> dict[str, Any]:
    """The runtimes `raw` compares, built directly (each one its own weights)."""
    from deepdetect_server.checkpoint import load_checkpoint
    from deepdetect_server.model import Detector
    from deepdetect_server.runtimes.ort import OnnxRuntime, available_providers

    loaded = load_checkpoint(checkpoint)
    card = loaded.card
    out: dict[str, Any] = {}
    for name in names:
        det = Detector(card, loaded.tensors, device=device, precision=precision, cpu_threads=cpu_threads)
        on_cuda = det.device.type == "cuda"
        if name == "torch-eager":
            out[name] = det
        elif name in ("torch-cuda-graphs", "torch-cuda-compile"):
            if not on_cuda:
                det.close()
                continue
            from deepdetect_server.runtimes.cuda import CudaRuntime

            rt = CudaRuntime(det, max_batch, "graphs" if name.endswith("graphs") else "compile")
            rt.prepare()
            out[name] = rt
        elif name == "onnxruntime":
            provider = "CUDAExecutionProvider" if on_cuda else "CPUExecutionProvider"
            if provider not in available_providers():
                print(f"note: {name} skipped ({provider} not in this onnxruntime)", file=sys.stderr)
                det.close()
                continue
            from deepdetect_server.runtimes.onnx_export import export_onnx

            graph = export_onnx(det.model, card)
            out[name] = OnnxRuntime(graph, card, device_type=det.device.type,
                                    device_index=det.device.index or 0, threads=det.cpu_threads or 1)
            det.close()
        else:
            raise SystemExit(f"unknown raw runtime {name!r}")
    return out


def time_predict(runtime: Any, batch: Any, seconds: float) -> tuple[float, float]:
    """(img/s, p50 ms per call) of `predict` on one host batch, after 3 warm-up calls."""
    for _ in range(3):
        runtime.predict(batch)
    calls: list[float] = []
    t0 = time.perf_counter()
    while True:
        c0 = time.perf_counter()
        runtime.predict(batch)  # returns host floats: the one sync per batch is inside
        calls.append(time.perf_counter() - c0)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and len(calls) >= 3:
            break
    return len(calls) * len(batch) / elapsed, 1000 * statistics.median(calls)


def _raw_main(args: argparse.Namespace) -> int:
    import torch
    from deepdetect_server.runtimes.base import warm_batch

    sizes = [int(s) for s in args.batch_sizes.split(",")]
    names = [n.strip() for n in args.runtimes.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="deepdetect-raw-") as tmp:
        ckpt = Path(tmp) / "raw.safetensors"
        make_checkpoint(ckpt, args.arch, args.input_size)
        runtimes = raw_runtimes(ckpt, device=args.device, precision=args.precision, max_batch=max(sizes),
                                cpu_threads=args.torch_threads, names=names)
        gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        print(f"raw {args.arch} {args.input_size}px {args.precision} on {gpu}: predict from host uint8")
        print(f"{'runtime':<20} {'batch':>6} {'img/s':>10} {'p50 ms':>9}")
        best: tuple[str, int, float] | None = None
        p50_b1: dict[str, float] = {}
        for name, rt in runtimes.items():
            card = rt.card
            for n in sizes:
                rate, p50 = time_predict(rt, warm_batch(card, n, seed=n), args.seconds)
                print(f"{name:<20} {n:>6} {rate:>10.1f} {p50:>9.2f}", flush=True)
                if n == 1:
                    p50_b1[name] = p50
                if best is None or rate > best[2]:
                    best = (name, n, rate)
            rt.close()
    if best is None:
        print("raw-best: none (no runtime ran)")
        return 1
    lat = " ".join(f"{k}={v:.2f}" for k, v in p50_b1.items())
    print(f"raw-p50-batch1-ms: {lat}")
    print(f"raw-best: precision={args.precision} runtime={best[0]} batch={best[1]} img_s={best[2]:.1f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    raw = sub.add_parser("raw", help="each runtime's predict img/s per batch size (random init)")
    raw.add_argument("--arch", default="efficientnet_b4")
    raw.add_argument("--input-size", type=int, default=380)
    raw.add_argument("--device", default="cuda")
    raw.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")
    raw.add_argument("--batch-sizes", default="1,8,32,64,128,256")
    raw.add_argument("--runtimes", default="torch-eager,torch-cuda-graphs,onnxruntime",
                     help="torch-eager, torch-cuda-graphs, torch-cuda-compile (slow to build), onnxruntime; "
                          "CUDA-only ones are skipped on CPU")
    raw.add_argument("--seconds", type=float, default=1.0, help="timed seconds per runtime and batch size")
    raw.add_argument("--torch-threads", type=int, default=0, help="CPU only; 0: the Detector's default")
    args = parser.parse_args(argv)
    return _raw_main(args)


if __name__ == "__main__":
    sys.exit(main())
