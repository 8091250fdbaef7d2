"""Server benchmark (issue 2, item 8): the shipped server vs the guide's naive design and its bare compute.

Systems, each at every concurrency level:
  server  `deepdetect-server serve` in a subprocess (uvicorn on a free loopback port), max_batch_size =
          min(concurrency, --max-batch-size), max_delay_ms = --max-delay-ms (1 disables batching at c=1);
  naive   bench/naive_server.py in a subprocess: full-size Pillow decode, torchvision resize, one forward per
          request in FastAPI's thread pool;
  bare    bench/bare.py in this process: the server's own Preprocessor + Detector in a plain loop at the
          batch size the server actually formed at that concurrency (its /metrics batch_size mean).

All three load the same random-init checkpoint (one safetensors file, one card). The card declares the
preprocessing, including `decode: reduced` (libjpeg DCT-scaled decode): the server and bare apply it because
the card says so; the naive server ignores it, as the guide did. Torch runs with the same thread count
everywhere (--torch-threads, default 1): the server's `cpu_threads` setting (DEEPDETECT_CPU_THREADS), which
it applies on its forward thread; OMP_NUM_THREADS for the naive server (torch reads it at start-up); the
same `cpu_threads` for the bare Detector here. Why 1 on 2 cores: the decode threads need the other core,
and OpenMP threads that spin-wait on a core a decoder holds stall the forward pass (bench/README.md).

The client sends ordinary JPEG photos (skimage.data, resized to 300-1,400 px on the longer side, quality 90)
as multipart uploads (what `curl -F` and the guide's clients send), pre-encoded so the client spends its CPU
on HTTP only, from `concurrency` keep-alive connections split over `--client-procs` processes. The load
generator shares the 2 cores with the servers, so by default it is a minimal asyncio HTTP/1.1 client
(`--client raw`, ~3% of a core at 280 req/s); `--client httpx` uses httpx.AsyncClient, which costs about
2 ms of CPU per request here and takes that from the server under test. The `client%` column is the
client's CPU time over wall time (100 = one core), so a saturated or greedy client shows.

The LAST line is `ratios: server/naive=X.XX server/bare=Y.YY` at the highest concurrency measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import multiprocessing as mp
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bare import BareRunner

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")
BOUNDARY = "deepdetect-bench-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


# --- inputs ------------------------------------------------------------------------------------------------


def make_photos(count: int, min_px: int, max_px: int, quality: int = 90) -> list[bytes]:
    """Real photos as JPEG bytes, longer side spread evenly over [min_px, max_px], cycling the sources.

    Sizes matter more than content here: decode cost grows with pixels, and reduced-size decoding helps
    only above about 2x the model's resize target, so the spread covers both sides of that line.
    """
    from PIL import Image
    from skimage import data

    sources = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    out: list[bytes] = []
    for i in range(count):
        longer = round(min_px + (max_px - min_px) * i / max(1, count - 1))
        src = sources[i % len(sources)]
        scale = longer / max(src.size)
        img = src.resize((max(1, round(src.width * scale)), max(1, round(src.height * scale))),
                         Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def multipart(jpeg: bytes, index: int) -> bytes:
    """One `file` part, as `curl -F file=@imgN.jpg` sends it; built once so the client only does HTTP."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="img{index}.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()


# --- client ------------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """Latencies of the measured requests, plus what the client itself cost."""

    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    started: float = math.inf
    ended: float = 0.0
    client_cpu_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)


class _RawConnection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: pre-built request bytes, Content-Length body.

    `--client raw` exists to measure how much of a 2-core machine the load generator itself takes: it
    costs a fraction of httpx's CPU per request, which is then left to the server under test.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port = host, port
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                     "Content-Length: ").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> str:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)[1]
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        if "chunked" in fields.get("transfer-encoding", ""):
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")  # no trailers: the final CRLF
        else:
            await self.reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _drive(url: str, bodies: Sequence[bytes], concurrency: int, requests: int, warmup: int,
                 offset: int, barrier: object | None, client_kind: str = "httpx") -> LoadResult:
    import httpx

    result = LoadResult()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": CONTENT_TYPE}
    parsed = httpx.URL(url)
    raw = [_RawConnection(parsed.host, parsed.port or 80, parsed.raw_path.decode())
           for _ in range(concurrency)]
    async with httpx.AsyncClient(limits=limits, timeout=120.0) as client:

        async def post(body: bytes, slot: int) -> str:
            if client_kind == "raw":
                return await raw[slot].post(body)
            resp = await client.post(url, content=body, headers=headers)
            return str(resp.status_code)

        async def worker(slot: int, counter: list[int], total: int, record: bool) -> None:
            while counter[0] < total:
                i = counter[0]
                counter[0] += 1
                body = bodies[(offset + i) % len(bodies)]
                t0 = time.perf_counter()
                try:
                    status = await post(body, slot)
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError) as exc:
                    status = type(exc).__name__
                    await raw[slot].close()
                t1 = time.perf_counter()
                if record:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status == "200":
                        result.latencies_s.append(t1 - t0)
                    else:
                        result.errors += 1

        # Warm-up opens every connection and lets the server reach its steady state before timing.
        warm_counter = [0]
        await asyncio.gather(*(worker(k, warm_counter, warmup, False) for k in range(concurrency)))
        if barrier is not None:
            await asyncio.to_thread(barrier.wait)  # type: ignore[attr-defined]
        counter = [0]
        cpu0 = time.process_time()
        result.started = time.perf_counter()
        await asyncio.gather(*(worker(k, counter, requests, True) for k in range(concurrency)))
        result.ended = time.perf_counter()
        result.client_cpu_s = time.process_time() - cpu0
    for conn in raw:
        await conn.close()
    return result


def _client_proc(url: str, bodies: Sequence[bytes], concurrency: int, requests: int, warmup: int,
                 offset: int, barrier: object, queue: mp.Queue, client_kind: str) -> None:  # type: ignore[type-arg]
    """One client process: same loop, results back through the queue (perf_counter is system-wide)."""
    result = asyncio.run(_drive(url, bodies, concurrency, requests, warmup, offset, barrier, client_kind))
    queue.put(asdict(result))


def run_load(url: str, bodies: Sequence[bytes], concurrency: int, requests: int, warmup: int,
             procs: int = 1, client_kind: str = "httpx") -> LoadResult:
    """`requests` POSTs with `concurrency` in flight, after `warmup` untimed ones, from `procs` processes."""
    procs = max(1, min(procs, concurrency))
    if procs == 1:
        return asyncio.run(_drive(url, bodies, concurrency, requests, warmup, 0, None, client_kind))
    ctx = mp.get_context("spawn")  # not fork: this process has torch's threads
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    children = []
    for k in range(procs):
        share_c = concurrency // procs + (1 if k < concurrency % procs else 0)
        share_n = requests // procs + (1 if k < requests % procs else 0)
        p = ctx.Process(target=_client_proc, args=(url, bodies, share_c, share_n, warmup // procs,
                                                    k * 7919, barrier, queue, client_kind), daemon=True)
        p.start()
        children.append(p)
    parts = [LoadResult(**queue.get(timeout=600)) for _ in children]
    for p in children:
        p.join(timeout=10)
    merged = LoadResult(started=min(r.started for r in parts), ended=max(r.ended for r in parts))
    for r in parts:
        merged.latencies_s += r.latencies_s
        merged.errors += r.errors
        merged.client_cpu_s += r.client_cpu_s
        for k, v in r.statuses.items():
            merged.statuses[k] = merged.statuses.get(k, 0) + v
    return merged


# --- servers -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    """A server subprocess the benchmark started."""

    name: str
    base: str
    health: str
    proc: subprocess.Popen[bytes]
    log: Path


def torch_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every process gets: the same torch thread count, unbuffered, plus `extra`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    if threads:
        # The server applies its own cpu_threads setting on its forward thread; the naive server's torch
        # reads OMP_NUM_THREADS at start-up. Same number for both.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = env["DEEPDETECT_CPU_THREADS"] = str(threads)
    src = str(ROOT / "inference_server")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def server_cli() -> list[str]:
    """`deepdetect-server` from this interpreter's environment, or the module when not installed."""
    exe = Path(sys.executable).with_name("deepdetect-server")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "deepdetect_server.cli"]


def start(name: str, cmd: list[str], port: int, health: str, env: dict[str, str], logdir: Path) -> Running:
    log = logdir / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    return Running(name, base, base + health, proc, log)


def wait_ready(servers: Sequence[Running], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending:
        for srv in list(pending):
            if srv.proc.poll() is not None:
                tail = srv.log.read_text()[-3000:]
                raise RuntimeError(f"{srv.name} exited ({srv.proc.returncode}):\n{tail}")
            try:
                if httpx.get(srv.health, timeout=2.0).status_code == 200:
                    pending.remove(srv)
            except httpx.TransportError:
                pass
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not ready in {timeout:.0f}s: {', '.join(s.name for s in pending)}\n"
                               + pending[0].log.read_text()[-3000:])
        if pending:
            time.sleep(0.2)


def stop(srv: Running) -> None:
    """SIGTERM (the server drains, then exits), then SIGKILL if it lingers; only our own process."""
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        try:
            srv.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()


_METRIC = re.compile(r"^(deepdetect_[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def scrape(base: str) -> dict[str, float]:
    """Unlabelled sums of the server's metrics (labels summed over), e.g. deepdetect_batch_size_sum."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(base + "/metrics", timeout=5.0).text.splitlines():
        m = _METRIC.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class Point:
    system: str
    concurrency: int
    max_batch: int
    mean_batch: float
    requests: int
    errors: int
    img_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_pct: float
    extra: dict[str, float] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: with 400 samples p99 is the 4th slowest, no interpolation games."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def from_load(system: str, c: int, max_batch: int, mean_batch: float, r: LoadResult) -> Point:
    wall = max(1e-9, r.ended - r.started)
    ok = len(r.latencies_s)
    return Point(system, c, max_batch, mean_batch, ok + r.errors, r.errors, ok / wall,
                 1000 * percentile(r.latencies_s, 50), 1000 * percentile(r.latencies_s, 99),
                 100 * r.client_cpu_s / wall)


def print_header() -> None:
    print(f"{'system':<12} {'conc':>4} {'maxb':>4} {'batch':>5} {'reqs':>5} {'err':>3} {'img/s':>8} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'client%':>7}")


def print_table(points: Sequence[Point], header: bool = True) -> None:
    if header:
        print_header()
    for p in points:
        client = f"{p.client_cpu_pct:7.0f}" if p.system != "bare" else f"{'-':>7}"
        print(f"{p.system:<12} {p.concurrency:>4} {p.max_batch:>4} {p.mean_batch:>5.1f} {p.requests:>5} "
              f"{p.errors:>3} {p.img_s:>8.1f} {p.p50_ms:>8.1f} {p.p99_ms:>8.1f} {client}")


def ratios_line(points: Sequence[Point]) -> str:
    """At the top concurrency: default server vs naive and vs bare, and the best server vs torch eager."""
    top = max(p.concurrency for p in points)
    rate = {p.system: p.img_s for p in points if p.concurrency == top}

    def ratio(a: str, b: str) -> float:
        x, d = rate.get(a, math.nan), rate.get(b, math.nan)
        return x / d if d and not math.isnan(d) and not math.isnan(x) else math.nan

    servers = [name for name in rate if name == "server" or name.startswith("server-")]
    best = max(servers, key=lambda n: rate[n]) if servers else "server"
    return (f"ratios: server/naive={ratio('server', 'naive'):.2f} server/bare={ratio('server', 'bare'):.2f} "
            f"best/torch={ratio(best, 'server-torch'):.2f} best={best}")


def ready_line(log: Path) -> dict[str, object]:
    """The server's own `model ready` log line: which runtime it chose, its thread plan, int8 drift."""
    for line in log.read_text(errors="replace").splitlines():
        if '"model ready"' in line:
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return {}


def describe_selection(name: str, ready: dict[str, object]) -> str:
    sel = ready.get("selection") or {}
    assert isinstance(sel, dict)
    plan = sel.get("plan") or {}
    text = (f"{name}: runtime {ready.get('runtime')} ({ready.get('precision')}), "
            f"threads {plan.get('threads')}, decode workers {plan.get('decode_workers')}, "
            f"ready after {ready.get('load_s')} s")
    int8 = (sel.get("candidates") or {}).get("onnxruntime-int8")
    if int8:
        text += f"; int8 {int8.get('gate')}"
    fwd = {k: v.get("forward_ms_per_image") for k, v in (sel.get("candidates") or {}).items()
           if isinstance(v, dict) and v.get("forward_ms_per_image")}
    if fwd:
        text += f"; forward ms/img by threads {fwd}, decode {sel.get('decode_ms_per_image')} ms/img"
    return text


# --runtimes name -> (system label, server settings it changes from the defaults)
RUNTIME_SYSTEMS = {"torch": ("server-torch", {"runtime": "torch"}),
                   "onnxruntime": ("server-ort", {"runtime": "onnxruntime"}),
                   "int8": ("server-int8", {"runtime": "onnxruntime", "precision": "int8"})}


# --- main --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="test_efficientnet", help="timm architecture (random init)")
    p.add_argument("--input-size", type=int, default=160)
    p.add_argument("--decode", choices=("full", "reduced"), default="reduced",
                   help="the card's decode mode (reduced: libjpeg DCT scaling via Pillow draft)")
    p.add_argument("--checkpoint", type=Path, help="use this checkpoint instead of building one")
    p.add_argument("--systems", default="server,naive,bare",
                   help="server: default settings (runtime auto); naive; bare: the server's runtime, no HTTP")
    p.add_argument("--runtimes", default="torch,onnxruntime",
                   help="also serve with each of these runtimes (torch, onnxruntime, int8), as server-<rt>")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=480, help="measured requests per point")
    p.add_argument("--min-requests-per-conn", type=int, default=0,
                   help="raise a point's requests to this many per connection (high concurrency on a GPU)")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed requests per point (0: 2 x concurrency + 16)")
    p.add_argument("--max-batch-size", type=int, default=32, help="cap on the server's max_batch_size")
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--decode-workers", type=int, default=0, help="server + bare decode threads (0: CPUs)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="intra-op threads in every process (0: each one's default: the server plans them)")
    p.add_argument("--client-procs", type=int, default=1, help="client processes (split the concurrency)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="httpx.AsyncClient, or a minimal asyncio HTTP/1.1 client (less client CPU)")
    p.add_argument("--photos", type=int, default=24)
    p.add_argument("--min-px", type=int, default=300)
    p.add_argument("--max-px", type=int, default=1400)
    p.add_argument("--device", default="cpu", help="server/bare device: cpu | cuda")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--log-level", default="info", help="server log level (info: as shipped)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test settings: few small photos, short warm-up, one server for all levels")
    p.add_argument("--rounds", type=int, default=3,
                   help="sweeps over every system and level; the table shows each point's median")
    p.add_argument("--json", type=Path, help="also write every point as JSON here")
    p.add_argument("--keep-logs", type=Path, help="copy server logs into this folder")
    return p.parse_args(argv)


def max_batch_for(args: argparse.Namespace, c: int, levels: Sequence[int]) -> int:
    """The server's max_batch_size at concurrency c: never more than can be in flight, capped."""
    top = max(levels) if args.quick else c  # --quick: one server for every level
    return max(1, min(top, args.max_batch_size))


def one_round(args: argparse.Namespace, levels: Sequence[int], bodies: Sequence[bytes],
              photos: Sequence[bytes], servers: dict[tuple[str, int], Running], naive: Running | None,
              bare: BareRunner | None) -> list[Point]:
    """Every system at every concurrency level once, server first so bare can copy its batch size."""
    points: list[Point] = []
    for c in levels:
        warmup = args.warmup or 2 * c + 16
        requests = max(args.requests, args.min_requests_per_conn * c)
        mb = max_batch_for(args, c, levels)
        mean_batch = float(mb)
        for (system, size), srv in servers.items():
            if size != mb:
                continue
            before = scrape(srv.base)
            r = run_load(srv.base + "/v1/detect", bodies, c, requests, warmup, args.client_procs,
                         args.client)
            after = scrape(srv.base)

            def delta(name: str, after: dict[str, float] = after, before: dict[str, float] = before
                      ) -> float:
                return after.get(name, 0.0) - before.get(name, 0.0)

            n = delta("deepdetect_batch_size_count")
            got = delta("deepdetect_batch_size_sum") / n if n else math.nan
            point = from_load(system, c, mb, got, r)
            if system == "server":
                mean_batch = got  # bare copies the default server's batch size
            # From the server's own /metrics over warm-up + measured requests: where a request's time went.
            def mean_ms(total: str, count: float) -> float:
                return 1000 * delta(total) / count if count else math.nan

            point.extra = {
                "server_request_ms": mean_ms("deepdetect_request_duration_seconds_sum",
                                             delta("deepdetect_request_duration_seconds_count")),
                "queue_wait_ms": mean_ms("deepdetect_queue_wait_seconds_sum",
                                         delta("deepdetect_queue_wait_seconds_count")),
                "forward_ms_per_batch": mean_ms("deepdetect_inference_seconds_sum", n),
                "batches": n,
                **{f"status_{k}": float(v) for k, v in r.statuses.items()},
            }
            points.append(point)
            print_table([point], header=False)
        if naive is not None:
            r = run_load(naive.base + "/v1/detect", bodies, c, requests, warmup, args.client_procs,
                         args.client)
            points.append(from_load("naive", c, 1, 1.0, r))
            print_table([points[-1]], header=False)
        if bare is not None:
            b = max(1, round(mean_batch)) if not math.isnan(mean_batch) else mb
            res = bare.run(photos, batch_size=b, requests=requests, warmup=warmup)
            points.append(Point("bare", c, b, float(b), res.images, 0, res.images / res.seconds,
                                1000 * percentile(res.latencies_s, 50),
                                1000 * percentile(res.latencies_s, 99), math.nan))
            print_table([points[-1]], header=False)
        sys.stdout.flush()
    return points


def median_points(rounds: Sequence[Sequence[Point]]) -> list[Point]:
    """Per (system, concurrency): the median of each rate and latency over rounds, counts summed."""
    out: list[Point] = []
    for i, first in enumerate(rounds[0]):
        same = [r[i] for r in rounds]

        def med(attr: str, same: list[Point] = same) -> float:
            values = [getattr(p, attr) for p in same if not math.isnan(getattr(p, attr))]
            return statistics.median(values) if values else math.nan

        point = Point(first.system, first.concurrency, round(med("max_batch")), med("mean_batch"),
                      sum(p.requests for p in same), sum(p.errors for p in same), med("img_s"),
                      med("p50_ms"), med("p99_ms"), med("client_cpu_pct"))
        for key in first.extra:
            values = [p.extra[key] for p in same if key in p.extra and not math.isnan(p.extra[key])]
            point.extra[key] = statistics.median(values) if values else math.nan
        out.append(point)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.photos, args.max_px, args.rounds = min(args.photos, 6), min(args.max_px, 800), 1
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    t_begin = time.perf_counter()

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    threads = torch.get_num_threads()
    photos = make_photos(args.photos, args.min_px, args.max_px)
    bodies = [multipart(j, i) for i, j in enumerate(photos)]
    kib = statistics.median(len(j) for j in photos) / 1024

    with tempfile.TemporaryDirectory(prefix="deepdetect-bench-") as tmp, ExitStack() as stack:
        tmpdir = Path(tmp)
        ckpt = args.checkpoint
        if ckpt is None:
            sys.path.insert(0, str(HERE))
            from bare import make_checkpoint

            ckpt = tmpdir / "bench.safetensors"
            make_checkpoint(ckpt, args.arch, args.input_size, args.decode)
        from deepdetect_server.checkpoint import load_checkpoint

        card = load_checkpoint(ckpt).card
        print(f"model {card.architecture} {card.input_size}px decode={card.decode} "
              f"interpolation={card.interpolation} crop_pct={card.crop_pct}; torch threads {threads} "
              f"in every process; {os.cpu_count()} CPUs; {len(photos)} JPEG photos "
              f"{args.min_px}-{args.max_px} px (median {kib:.0f} KiB); {args.requests} requests per point",
              flush=True)

        # Start every server up front, in parallel: idle ones cost no CPU, and start-up is paid once.
        env = torch_env(args.torch_threads if args.torch_threads else 0, {
            "DEEPDETECT_SHUTDOWN_DRAIN_S": "0", "DEEPDETECT_SHUTDOWN_GRACE_S": "10",
            "DEEPDETECT_MAX_QUEUE": str(max(256, 4 * max(levels))),
            # The same photos are sent over and over: the model's throughput is measured, not the cache's.
            "DEEPDETECT_CACHE_ENABLED": "false",
            **({"DEEPDETECT_DECODE_WORKERS": str(args.decode_workers)} if args.decode_workers else {}),
        })
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
        configs: list[tuple[str, dict[str, str]]] = []
        if "server" in systems:
            configs.append(("server", {}))  # the defaults: runtime auto, threads planned
        for rt in runtimes:
            if rt not in RUNTIME_SYSTEMS:
                raise SystemExit(f"unknown runtime {rt!r}: expected one of {', '.join(RUNTIME_SYSTEMS)}")
            configs.append(RUNTIME_SYSTEMS[rt])
        if "int8" in runtimes:
            samples = tmpdir / "samples"
            samples.mkdir()
            for i, jpg in enumerate(make_photos(32, args.min_px, args.max_px, quality=85)):
                (samples / f"s{i:02d}.jpg").write_bytes(jpg)
            env["DEEPDETECT_SAMPLES"] = str(samples)
        # Servers start one at a time: each one times its runtimes and plans its threads at start-up, and
        # a neighbour starting at the same moment would skew that measurement. Idle ones cost no CPU.
        servers: dict[tuple[str, int], Running] = {}
        naive: Running | None = None
        for system, extra in configs:
            for mb in sorted({max_batch_for(args, c, levels) for c in levels}):
                port = free_port()
                cmd = [*server_cli(), "serve", "--checkpoint", str(ckpt), "--host", "127.0.0.1",
                       "--port", str(port), "--device", args.device,
                       "--precision", extra.get("precision", args.precision),
                       "--runtime", extra.get("runtime", "auto"),
                       "--max-batch-size", str(mb), "--max-delay-ms", str(args.max_delay_ms),
                       "--log-level", args.log_level]
                srv = start(f"{system}-b{mb}", cmd, port, "/v2/health/ready", env, tmpdir)
                servers[(system, mb)] = srv
                stack.callback(stop, srv)
                wait_ready([srv], timeout=600)
        if "naive" in systems:
            port = free_port()
            naive = start("naive", [sys.executable, str(HERE / "naive_server.py"), "--checkpoint", str(ckpt),
                                    "--port", str(port)], port, "/health", env, tmpdir)
            stack.callback(stop, naive)
            wait_ready([naive], timeout=300)
        print(f"servers ready after {time.perf_counter() - t_begin:.1f}s", flush=True)
        selections = [describe_selection(srv.name, ready_line(srv.log)) for srv in servers.values()]
        for line in selections:
            print(line, flush=True)

        bare: BareRunner | None = None
        if "bare" in systems:
            sys.path.insert(0, str(HERE))
            from bare import BareRunner

            # The default server's settings at the top level's batch size: the same runtime choice and plan.
            bare = BareRunner(ckpt, decode_workers=args.decode_workers, cpu_threads=args.torch_threads,
                              device=args.device, precision=args.precision,
                              max_batch_size=max_batch_for(args, max(levels), levels))
            print(describe_selection("bare", {"runtime": bare.runtime.name,
                                              "precision": bare.runtime.precision,
                                              "selection": bare.report}), flush=True)
            stack.callback(bare.close)
        rounds: list[list[Point]] = []
        for k in range(args.rounds):
            # Every system at every level in each round: noise from the shared machine hits all of them.
            print(f"round {k + 1}/{args.rounds}")
            print_header()
            rounds.append(one_round(args, levels, bodies, photos, servers, naive, bare))
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for srv in [*servers.values(), *([naive] if naive else [])]:
                (args.keep_logs / srv.log.name).write_bytes(srv.log.read_bytes())

    points = median_points(rounds)
    print(f"\nmedian of {len(rounds)} round(s) per point:")
    print_table(points)
    if args.json:
        args.json.write_text(json.dumps({"median": [asdict(p) for p in points],
                                         "rounds": [[asdict(p) for p in r] for r in rounds]},
                                        indent=1, default=str))
    for line in selections:
        print(line)
    for p in points:
        if p.system.startswith("server") and p.extra:
            e = p.extra
            print(f"{p.system} c={p.concurrency}: server-side request {e['server_request_ms']:.1f} ms "
                  f"(client-side p50 {p.p50_ms:.1f}), queue wait {e['queue_wait_ms']:.1f} ms, "
                  f"forward {e['forward_ms_per_batch']:.1f} ms per batch of {p.mean_batch:.1f}")
    print(f"took {time.perf_counter() - t_begin:.0f}s")
    print(ratios_line(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
