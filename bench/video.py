"""Video benchmark: the server's media pipeline against a naive design, and its decode against a plain pass.

  server  `deepdetect-server serve` in a subprocess with video on: sampled decode in killable workers,
          Haar face crops, all crops of all requests through the batcher.
  naive   in this process, the same card, detector and model: decode EVERY frame to RGB, take every n-th
          (n = frames / K), detect + crop + one forward per frame; `--concurrency` threads, no HTTP.
          (No HTTP makes it cheaper than a served version would be: the ratio is conservative.)
  decode  per video, `video.sample` (the server's decode: demux, keyframe restarts, convert only the
          chosen) against a plain PyAV pass that decodes every frame up to the last sample and converts
          only the same samples to RGB; alternated, medians.

Run: `python bench/video.py` (about 1-2 minutes on 2 cores). Prints a table and ratio lines.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "inference_server"), str(ROOT / "tests" / "server"), str(ROOT / "bench")]

from deepdetect_server.checkpoint import card_for_architecture, create_checkpoint, load_checkpoint  # noqa: E402
from deepdetect_server.inputs import picture_inputs  # noqa: E402
from deepdetect_server.model import Detector  # noqa: E402
from deepdetect_server.preprocess import Preprocessor  # noqa: E402
from deepdetect_server.video import SampleStats, VideoLimits, sample, targets  # noqa: E402
from server import free_port, percentile, server_cli, start, stop, torch_env, wait_ready  # noqa: E402
from video_helpers import make_video  # noqa: E402

LIMITS = VideoLimits(600, 1920 * 1080, 120, 4)


def make_clips(count: int, seconds: int, fps: int) -> list[bytes]:
    sizes = [(480, 320), (640, 360), (560, 400)]
    return [make_video("mp4", n=seconds * fps, fps=fps, width=sizes[i % 3][0], height=sizes[i % 3][1],
                       gop=2 * fps) for i in range(count)]


# --- naive ------------------------------------------------------------------------------------------------

class Naive:
    def __init__(self, checkpoint: Path, k: int) -> None:
        loaded = load_checkpoint(checkpoint)
        self.card = loaded.card
        self.detector = Detector(loaded.card, loaded.tensors, device="cpu")
        self.prep = Preprocessor(loaded.card, 10**9)
        self.k = k
        self.lock = threading.Lock()  # one model, one forward at a time

    def __call__(self, data: bytes) -> float:
        with av.open(io.BytesIO(data)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]  # every frame, to RGB
        step = max(1, len(frames) // self.k)
        scores = []
        for rgb in frames[step // 2 :: step][: self.k]:
            pic = picture_inputs(rgb, self.card, self.prep)
            for _, arr in pic.inputs:
                with self.lock:
                    scores.append(self.detector.predict([arr])[0])  # one forward per crop
        return float(np.mean(scores)) if scores else float("nan")


def run_naive(naive: Naive, clips: list[bytes], concurrency: int, requests: int) -> tuple[float, list[float]]:
    lat: list[float] = []

    def one(i: int) -> None:
        t = time.perf_counter()
        naive(clips[i % len(clips)])
        lat.append(time.perf_counter() - t)

    naive(clips[0])  # warm-up (lazy init), as the server gets its warm-up requests
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    return requests / (time.perf_counter() - started), lat


# --- server -----------------------------------------------------------------------------------------------

async def _drive(url: str, clips: list[bytes], concurrency: int, requests: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    counter = iter(range(requests))
    async with httpx.AsyncClient(timeout=120) as client:
        async def worker() -> None:
            for i in counter:
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/detect", content=clips[i % len(clips)])
                r.raise_for_status()
                lat.append(time.perf_counter() - t)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started), lat


# --- decode -----------------------------------------------------------------------------------------------

def plain_pass(data: bytes, k: int) -> int:
    """Demux + decode every frame up to the last sample; convert only the frames shown at the targets."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        seconds = float(s.duration * s.time_base)
        wanted = targets(0.0, seconds, k)
        out, prev, i = 0, None, 0
        for f in c.decode(s):
            t = float(f.pts * s.time_base)
            while i < len(wanted) and t > wanted[i]:
                if prev is not None:
                    prev.to_ndarray(format="rgb24")
                    out += 1
                i += 1
            if i >= len(wanted):
                break
            prev = f
        while i < len(wanted) and prev is not None:
            prev.to_ndarray(format="rgb24")
            out += 1
            i += 1
    return out


def decode_ratio(clips: list[bytes], k: int, rounds: int) -> tuple[float, float, float]:
    ours, plain = [], []
    for _ in range(rounds):
        for clip in clips:
            t = time.perf_counter()
            sample(clip, "mov", LIMITS, k, SampleStats())
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            plain_pass(clip, k)
            plain.append(time.perf_counter() - t)
    a, b = statistics.median(ours), statistics.median(plain)
    return a, b, a / b


def run_server(args: argparse.Namespace, work: Path, ckpt: Path, clips: list[bytes]
               ) -> tuple[float, list[float]]:
    port = free_port()
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({
        "checkpoint": str(ckpt), "host": "127.0.0.1", "port": port, "device": "cpu", "video_enabled": True,
        "video_workers": 2, "max_batch_size": 32, "max_delay_ms": 5, "cache_enabled": False,
        "log_level": "warning", "max_video_frames": args.frames, "runtime": "torch"}))
    srv = start("server", [*server_cli(), "serve", "--config", str(config)], port, "/v2/health/ready",
                torch_env(args.torch_threads), work)
    try:
        wait_ready([srv], 180)
        asyncio.run(_drive(srv.base, clips, args.concurrency, args.concurrency))  # warm-up
        return asyncio.run(_drive(srv.base, clips, args.concurrency, args.requests))
    finally:
        stop(srv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--seconds", type=int, default=10, help="DFDC clips are 10 s at 30 fps")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--frames", type=int, default=16, help="K, the card's frames per video")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--torch-threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.torch_threads)  # the naive side: the same torch threads as the server
    work = Path(tempfile.mkdtemp(prefix="deepdetect-video-bench-"))
    clips = make_clips(args.videos, args.seconds, args.fps)
    print(f"{len(clips)} clips, {args.seconds} s at {args.fps} fps ({args.seconds * args.fps} frames), "
          f"K = {args.frames}, concurrency {args.concurrency}, {args.requests} requests per system")
    print(f"{'card':12} {'system':8} {'videos/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    ratios = []
    for name, faces in (("faces", {"detector": "haar"}), ("whole-frame", None)):
        ckpt = work / f"{name}.safetensors"
        card = card_for_architecture("test_efficientnet", 128, faces=faces,
                                     aggregation={"rule": "confident", "frames": args.frames})
        create_checkpoint(ckpt, card)
        s_rate, s_lat = run_server(args, work, ckpt, clips)
        n_rate, n_lat = run_naive(Naive(ckpt, args.frames), clips, args.concurrency, args.requests)
        for system, rate, lat in (("server", s_rate, s_lat), ("naive", n_rate, n_lat)):
            ms = [x * 1000 for x in lat]
            print(f"{name:12} {system:8} {rate:9.2f} {percentile(ms, 50):8.0f} {percentile(ms, 99):8.0f}")
        ratios.append(f"ratio server/naive videos/s ({name} card): {s_rate / n_rate:.2f}x (target >= 3x) "
                      f"at concurrency {args.concurrency}")
    ours, plain, ratio = decode_ratio(clips, args.frames, rounds=3)
    for line in ratios:
        print(line)
    print(f"ratio decode server/plain per video: {ratio:.2f}x (target <= 1.2x; {ours * 1000:.1f} ms vs "
          f"{plain * 1000:.1f} ms median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
