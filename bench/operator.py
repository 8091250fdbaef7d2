"""Operator benchmark: the real operator process against the kmock-based API server, 100 and 1000 CRs.

Prints, per size: seconds until every CR is reconciled (status observed for its generation, Deployment
present) and until the last write (kopf's bookkeeping included), API writes per CR (ours and kopf's),
writes during a no-op resync (target 0) and the operator's peak RSS. The operator runs as
`python -m deepdetect_operator run` in a child process (so its RSS is its own), logged in through a
kubeconfig pointing at the emulator, which runs here. Not part of `make test`:
`make bench` or `.venv/bin/python bench/operator.py [--sizes 100 1000]` (about 3 minutes on 2 cores).

`--cluster` resembles a cluster (bench/cluster_sim.py): a controller plays the ReplicaSets, Pods and their
status changes for every Deployment, and the CRs share `--uris` checkpoint URIs (pollInterval `--poll`)
on a real local HTTPS server with a self-signed certificate (the operator trusts it via SSL_CERT_FILE).
A CR counts as reconciled when its status says Ready for its generation. After settling it watches a
quiet window (`--quiet-seconds`, default 60, one full resync included) and prints, per size: seconds to
all Ready, operator API requests and writes per CR (watches excluded), checkpoint resolutions per poll
interval (one HEAD each), operator writes and reads in the quiet window, peak RSS and operator CPU
seconds per CR.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tests"))  # tests/kube_emulator.py
sys.path.append(str(ROOT / "bench"))
from cluster_sim import CheckpointServer, DeploymentController, peek  # noqa: E402
from kube_emulator import KubeEmulator, make_emulator  # noqa: E402

CRS = "deepdetect.io/v1alpha1/deepdetectservices"
DEPLOYMENTS = "apps/v1/deployments"
NS_COUNT = 10


@dataclass
class Result:
    size: int
    reconcile_s: float
    settled_s: float
    writes_per_cr: float
    ours_per_cr: float
    kopf_per_cr: float
    reads_per_cr: float
    noop_writes: int
    noop_window_s: float
    peak_rss_mb: float
    cpu_s: float = 0.0
    requests_per_cr: float = 0.0
    ckpt_per_interval: float = 0.0
    quiet_reads: int = 0


@dataclass(frozen=True)
class Mode:
    cluster: bool = False
    uris: int = 1
    poll_s: int = 30
    quiet_s: float = 60.0


def _kubeconfig(path: Path, server: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emu", "cluster": {"server": server}}],
        "users": [{"name": "emu", "user": {"token": "bench"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
        "current-context": "emu",
    }
    path.write_text(yaml.safe_dump(cfg))


def _cr(i: int, uri: str, poll: str = "0") -> dict[str, Any]:
    return {
        "apiVersion": "deepdetect.io/v1alpha1",
        "kind": "DeepDetectService",
        "metadata": {"name": f"svc-{i:04d}", "namespace": f"team-{i % NS_COUNT}"},
        "spec": {
            "model": {"architecture": "efficientnet_b0", "checkpoint": {"uri": uri, "pollInterval": poll}},
            "resources": {"gpus": 1},
        },
    }


def _ready(emu: KubeEmulator) -> int:
    done = 0
    for cr in peek(emu, CRS):
        meta, status = cr["metadata"], cr.get("status") or {}
        if status.get("observedGeneration") == meta.get("generation") and status.get("phase") == "Ready":
            done += 1
    return done


def _operator(req: Any) -> bool:
    return _agent(req).startswith(("deepdetect-operator", "kopf"))


def _is_watch(req: Any) -> bool:
    return "watch=true" in str(req.url.query_string) or "watch=1" in str(req.url.query_string)


def _reconciled(emu: KubeEmulator) -> int:
    done = 0
    deployments = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in emu.list_objects(DEPLOYMENTS)}
    for cr in emu.list_objects(CRS):
        meta, status = cr["metadata"], cr.get("status") or {}
        if status.get("observedGeneration") == meta.get("generation") and (
            meta["namespace"],
            meta["name"],
        ) in (deployments):
            done += 1
    return done


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            await asyncio.sleep(0.1)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _agent(req: Any) -> str:
    for key, value in req.headers.items():
        if key.lower() == "user-agent":
            return str(value)
    return ""


async def run_size(
    size: int, checkpoint_uri: str, workdir: Path, mode: Mode = Mode(), store: CheckpointServer | None = None
) -> Result:
    emu = make_emulator(namespaces=tuple(f"team-{i}" for i in range(NS_COUNT)))
    controller: DeploymentController | None = None
    async with emu, kmock.Server(emu) as server:
        kubeconfig = workdir / f"kubeconfig-{size}"
        _kubeconfig(kubeconfig, str(server.url).rstrip("/"))
        # Production-like timing: a full pass per CR every minute, the per-CR timer ticking every 5 s.
        resync = 60.0
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT / "operator")}
        if store is not None:
            env["SSL_CERT_FILE"] = str(store.cert)  # trust the store's self-signed certificate
            env["PYTHONPATH"] += os.pathsep + str(ROOT / "inference_server")
        cmd = [
            sys.executable, "-m", "deepdetect_operator", "run", "--quiet", "--log-format", "plain",
            "--metrics-port", "0", "--liveness", "", "--resync-seconds", str(resync), "--tick-seconds", "5",
        ]  # fmt: skip
        log = (workdir / f"operator-{size}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        sampler = RssSampler(proc.pid)
        sampler.start()
        if mode.cluster:
            controller = DeploymentController(emu, str(server.url))
            await controller.__aenter__()
        try:
            await asyncio.sleep(1.0)  # let it log in and start its watches
            start_index = len(emu.recorded)
            t0 = time.monotonic()
            async with aiohttp.ClientSession(base_url=str(server.url)) as http:
                sem = asyncio.Semaphore(32)

                async def create(i: int) -> None:
                    if mode.cluster:
                        uri = f"{checkpoint_uri}/ckpt-{i % mode.uris}.safetensors"
                        body = _cr(i, uri, f"{mode.poll_s}s")
                    else:
                        body = _cr(i, checkpoint_uri)
                    ns = body["metadata"]["namespace"]
                    async with sem:
                        resp = await http.post(
                            f"/apis/deepdetect.io/v1alpha1/namespaces/{ns}/deepdetectservices", json=body
                        )
                        resp.raise_for_status()

                await asyncio.gather(*(create(i) for i in range(size)))
            deadline = t0 + 600
            done = _ready if mode.cluster else _reconciled
            while done(emu) < size:
                if time.monotonic() > deadline or proc.returncode is not None:
                    err = (workdir / f"operator-{size}.log").read_text()[-2000:]
                    errors = controller.errors[:3] if controller else []
                    if mode.cluster and proc.returncode is None:  # what it cost so far, for the table
                        cpu = psutil.Process(proc.pid).cpu_times()
                        raise RuntimeError(
                            f"only {done(emu)}/{size} Ready after {time.monotonic() - t0:.0f}s; peak RSS "
                            f"{sampler.peak / 2**20:.0f} MB, CPU {(cpu.user + cpu.system) / size:.4f} s/CR "
                            f"{errors}"
                        )
                    raise RuntimeError(f"only {done(emu)}/{size} reconciled; {errors} {err}")
                await asyncio.sleep(0.5 if mode.cluster else 0.2)
            reconcile_s = time.monotonic() - t0
            _progress(f"{size}: reconciled in {reconcile_s:.1f}s; settling")
            # Settle: wait until nobody writes for a few seconds.
            def op_writes() -> int:
                return sum(1 for w in emu.writes(start_index) if _operator(w))

            quiet_since, last_writes = time.monotonic(), op_writes()
            while time.monotonic() - quiet_since < 6:
                await asyncio.sleep(0.5)
                now_writes = op_writes()
                if now_writes != last_writes:
                    quiet_since, last_writes = time.monotonic(), now_writes
            settled_s = quiet_since - t0
            writes = [w for w in emu.writes(start_index) if _operator(w)]
            requests = sum(1 for r in emu.recorded[start_index:] if _operator(r) and not _is_watch(r))
            ours = sum(1 for w in writes if _agent(w).startswith("deepdetect-operator"))
            reads = sum(
                1
                for r in emu.recorded[start_index:]
                if r.method.value == "GET" and _agent(r).startswith("deepdetect")
            )
            _progress(f"{size}: settled after {time.monotonic() - t0:.1f}s; measuring a no-op resync")
            if mode.cluster:
                mark = len(emu.recorded)
                t1 = time.monotonic()
                await asyncio.sleep(mode.quiet_s)
                quiet = [r for r in emu.recorded[mark:] if _operator(r) and not _is_watch(r)]
                noop_writes = sum(1 for r in quiet if r.method.value != "GET")
                quiet_reads = len(quiet) - noop_writes
                assert store is not None
                ckpt_per_interval = store.resolutions(t1) / (mode.quiet_s / mode.poll_s)
                cpu = psutil.Process(proc.pid).cpu_times()
                return Result(
                    size=size, reconcile_s=reconcile_s, settled_s=settled_s,
                    writes_per_cr=len(writes) / size, ours_per_cr=ours / size,
                    kopf_per_cr=(len(writes) - ours) / size, reads_per_cr=reads / size,
                    noop_writes=noop_writes, noop_window_s=mode.quiet_s, peak_rss_mb=sampler.peak / 2**20,
                    cpu_s=cpu.user + cpu.system, requests_per_cr=requests / size,
                    ckpt_per_interval=ckpt_per_interval, quiet_reads=quiet_reads,
                )  # fmt: skip
            # No-op resync: every CR is re-read (its GET) at least once; count the writes meanwhile.
            mark = len(emu.recorded)
            t1 = time.monotonic()
            while True:
                seen = {
                    str(r.url.path)
                    for r in emu.recorded[mark:]
                    if r.method.value == "GET" and "/deepdetectservices/" in str(r.url.path)
                }
                if len(seen) >= size or time.monotonic() - t1 > resync * 2 + 30:
                    break
                await asyncio.sleep(0.5)
            noop_writes = len(emu.writes(mark))
            noop_window = time.monotonic() - t1
        finally:
            if controller is not None:
                await controller.__aexit__()
            if proc.returncode is None:
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
            await sampler.stop()
            log.close()
    return Result(
        size=size,
        reconcile_s=reconcile_s,
        settled_s=settled_s,
        writes_per_cr=len(writes) / size,
        ours_per_cr=ours / size,
        kopf_per_cr=(len(writes) - ours) / size,
        reads_per_cr=reads / size,
        noop_writes=noop_writes,
        noop_window_s=noop_window,
        peak_rss_mb=sampler.peak / 2**20,
    )


async def main_cluster(sizes: list[int], mode: Mode) -> int:
    print(f"operator benchmark, cluster-like (emulator + ReplicaSet/Pod controller, {mode.uris} checkpoint "
          f"URI(s) over HTTPS, pollInterval {mode.poll_s}s, quiet window {mode.quiet_s:.0f}s)")
    print(f"{'CRs':>6} {'all Ready s':>11} {'req/CR':>7} {'writes/CR':>9} {'ckpt req/interval':>17} "
          f"{'quiet writes':>12} {'quiet reads':>11} {'peak RSS MB':>11} {'CPU s/CR':>9}",
          flush=True)  # fmt: skip
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, CheckpointServer(Path(tmp)) as store:
        for size in sizes:
            try:
                r = await run_size(size, store.url, Path(tmp), mode, store)
            except RuntimeError as exc:  # a row that says why beats a lost table
                print(f"{size:>6} {str(exc)[:300]}", flush=True)
                failed += 1
                continue
            print(f"{r.size:>6} {r.reconcile_s:>11.1f} {r.requests_per_cr:>7.2f} {r.writes_per_cr:>9.2f} "
                  f"{r.ckpt_per_interval:>17.1f} {r.noop_writes:>12} {r.quiet_reads:>11} "
                  f"{r.peak_rss_mb:>11.0f} {r.cpu_s / r.size:>9.4f}", flush=True)  # fmt: skip
    return 1 if failed else 0


async def main(sizes: list[int]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ckpt = workdir / "model.safetensors"
        ckpt.write_bytes(hashlib.sha256(b"bench").digest() * 1024)
        results = [await run_size(size, f"file://{ckpt}", workdir) for size in sizes]
    print("operator benchmark (kmock-based API server, operator in a child process)")
    print(f"{'CRs':>6} {'reconcile s':>12} {'settled s':>10} {'CR/s':>7} {'writes/CR':>10} "
          f"{'(ours+kopf)':>12} {'reads/CR':>9} {'no-op writes':>13} {'peak RSS MB':>12}")  # fmt: skip
    for r in results:
        print(
            f"{r.size:>6} {r.reconcile_s:>12.1f} {r.settled_s:>10.1f} {r.size / r.reconcile_s:>7.1f} "
            f"{r.writes_per_cr:>10.2f} "
            f"{f'{r.ours_per_cr:.2f}+{r.kopf_per_cr:.2f}':>12} {r.reads_per_cr:>9.1f} "
            f"{r.noop_writes:>5} in {r.noop_window_s:>4.0f}s {r.peak_rss_mb:>12.0f}"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--cluster", action="store_true", help="ReplicaSets/Pods, shared HTTPS checkpoints")
    parser.add_argument("--uris", type=int, default=1, help="distinct checkpoint URIs (--cluster)")
    parser.add_argument("--poll", type=int, default=30, help="pollInterval seconds (--cluster)")
    parser.add_argument("--quiet-seconds", type=float, default=60.0, help="quiet window (--cluster)")
    args = parser.parse_args()
    if args.cluster:
        mode = Mode(cluster=True, uris=args.uris, poll_s=args.poll, quiet_s=args.quiet_seconds)
        raise SystemExit(asyncio.run(main_cluster(args.sizes, mode)))
    raise SystemExit(asyncio.run(main(args.sizes)))
