"""The server's own compute with nothing around it: the "bare" baseline and the raw forward-pass benchmark.

`BareRunner` is system (c) of `bench/server.py`: the server's own `Preprocessor` (sniff, header check,
reduced JPEG decode when the card says so, resize, crop) on the same decode pool size the server uses,
then the server's own `Detector.predict`, in a plain loop at a fixed batch size: no HTTP, no queue, no
event loop. Serving overhead is what the served number loses against this one.

`raw` (CLI subcommand) times the model forward pass alone, on device-resident input in the layout and
precision the server runs (channels_last + autocast on CUDA), and also `Detector.predict` from host uint8
(copy + normalise + forward + softmax): the ceiling any server on that card can reach. `bench/gpu.sh`
runs it for EfficientNet-B4 at 380 px on a GPU; `--device cpu` with a tiny model smoke-tests it anywhere.

Everything here uses random-init checkpoints built by the server's own checkpoint module: no downloads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BareResult:
    """One bare measurement: `latencies_s` is, per image, the wall time of the batch it was in."""

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
    """The server's Preprocessor + Detector, loaded once, run in a plain loop by `run`."""

    def __init__(self, checkpoint: Path | str, *, decode_workers: int = 0, cpu_threads: int = 0,
                 device: str = "cpu", precision: str = "fp32", max_pixels: int = 40_000_000) -> None:
        """0 for `decode_workers` / `cpu_threads` means the server's own defaults (os.cpu_count() decode
        threads; torch threads = the CPUs the cgroup allows), so bare and server use the same CPUs."""
        from deepdetect_server.checkpoint import load_checkpoint
        from deepdetect_server.model import Detector
        from deepdetect_server.preprocess import Preprocessor

        loaded = load_checkpoint(checkpoint)
        self.detector = Detector(loaded.card, loaded.tensors, device=device, precision=precision,
                                 cpu_threads=cpu_threads)
        self.preprocess = Preprocessor(loaded.card, max_pixels)
        workers = decode_workers or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bare-decode")

    def run(self, images: Sequence[bytes], *, batch_size: int, requests: int, warmup: int) -> BareResult:
        """Decode + preprocess (thread pool, like the server) + forward, `requests` images in batches."""

        def one_batch(start: int) -> float:
            chunk = [images[(start + k) % len(images)] for k in range(batch_size)]
            t0 = time.perf_counter()
            self.detector.predict(list(self.pool.map(self.preprocess, chunk)))
            return time.perf_counter() - t0

        for i in range(max(1, warmup // batch_size)):
            one_batch(i * batch_size)
        latencies: list[float] = []
        done = 0
        t_start = time.perf_counter()
        while done < requests:
            elapsed = one_batch(done)
            latencies.extend([elapsed] * batch_size)
            done += batch_size
        seconds = time.perf_counter() - t_start
        return BareResult(images=done, seconds=seconds, latencies_s=latencies, batch_size=batch_size)

    def close(self) -> None:
        self.pool.shutdown()
        self.detector.close()


def _sync(device: object) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)  # type: ignore[arg-type]


def raw_forward(
    checkpoint: Path | str,
    batch_sizes: Sequence[int],
    *,
    device: str,
    precision: str,
    seconds_per_point: float,
    cpu_threads: int = 0,
) -> list[tuple[int, float, float]]:
    """(batch, forward-only img/s, predict-from-host img/s) per batch size, each timed for ~seconds_per_point.

    Forward only: normalised float input already on the device, channels_last on CUDA, under the autocast
    the server uses. Predict: `Detector.predict` on a host uint8 NHWC batch, the server's worker-thread call.
    """
    import contextlib

    import torch
    from deepdetect_server.checkpoint import load_checkpoint
    from deepdetect_server.model import Detector

    loaded = load_checkpoint(checkpoint)
    det = Detector(loaded.card, loaded.tensors, device=device, precision=precision, cpu_threads=cpu_threads)
    size = loaded.card.input_size
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(det.precision)
    on_cuda = det.device.type == "cuda"
    autocast: contextlib.AbstractContextManager[object] = (
        torch.autocast("cuda", dtype=dtype) if on_cuda and dtype is not None else contextlib.nullcontext()
    )
    rows: list[tuple[int, float, float]] = []
    for n in batch_sizes:
        x = torch.randn(n, 3, size, size, device=det.device)
        if on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        host = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8)

        def forward(x: torch.Tensor = x) -> None:
            with torch.inference_mode(), autocast:
                det.model(x)

        def predict(host: torch.Tensor = host) -> None:
            det.predict(host)

        rates = []
        for fn in (forward, predict):
            for _ in range(3):  # warm-up: kernel selection, allocator growth
                fn()
            _sync(det.device)
            iters, t0 = 0, time.perf_counter()
            while True:
                fn()
                iters += 1
                _sync(det.device)
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds_per_point and iters >= 3:
                    break
            rates.append(iters * n / elapsed)
        rows.append((n, rates[0], rates[1]))
    det.close()
    return rows


def _raw_main(args: argparse.Namespace) -> int:
    import torch

    # cudnn.benchmark stays at torch's default (off), as in the server: raw measures what the server runs.
    with tempfile.TemporaryDirectory(prefix="deepdetect-raw-") as tmp:
        ckpt = Path(tmp) / "raw.safetensors"
        make_checkpoint(ckpt, args.arch, args.input_size)
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        rows = raw_forward(ckpt, sizes, device=args.device, precision=args.precision,
                           seconds_per_point=args.seconds, cpu_threads=args.torch_threads)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"raw {args.arch} {args.input_size}px {args.precision} on {name}")
    print(f"{'batch':>6} {'forward img/s':>14} {'predict img/s':>14}")
    for n, fwd, pred in rows:
        print(f"{n:>6} {fwd:>14.1f} {pred:>14.1f}")
    best = max(rows, key=lambda r: r[1])
    print(f"raw-best: precision={args.precision} batch={best[0]} forward_img_s={best[1]:.1f} "
          f"median_forward_img_s={statistics.median(r[1] for r in rows):.1f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    raw = sub.add_parser("raw", help="model forward img/s per batch size (random init)")
    raw.add_argument("--arch", default="efficientnet_b4")
    raw.add_argument("--input-size", type=int, default=380)
    raw.add_argument("--device", default="cuda")
    raw.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")
    raw.add_argument("--batch-sizes", default="1,8,32,64,128,256")
    raw.add_argument("--seconds", type=float, default=1.0, help="timed seconds per batch size and mode")
    raw.add_argument("--torch-threads", type=int, default=0, help="CPU only; 0: the server's default")
    args = parser.parse_args(argv)
    return _raw_main(args)


if __name__ == "__main__":
    sys.exit(main())
