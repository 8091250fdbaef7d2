"""Smoke tests for the benchmarks: the code paths run and the output keeps its format.

They assert no speed: this machine is shared and tiny settings measure nothing. What they protect is the
contract other people read: bench/server.py's table and its last line, `ratios: server/naive=X.XX
server/bare=Y.YY best/torch=Z.ZZ best=<system>`, and bench/bare.py's raw path that bench/gpu.sh runs on
a lent GPU.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RATIOS = re.compile(r"^ratios: server/naive=(\d+\.\d\d|nan) server/bare=(\d+\.\d\d|nan) "
                    r"best/torch=(\d+\.\d\d|nan) best=(server[-a-z0-9]*)$")
ROW = re.compile(r"^(server|server-torch|server-ort|naive|bare)"
                 r"\s+(\d+)\s+\d+\s+[\d.]+\s+(\d+)\s+(\d+)\s+([\d.]+)\s")

pytest.importorskip("timm")
pytest.importorskip("skimage")


def test_server_bench_prints_table_and_ratios_line() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "server.py"), "--requests", "8", "--concurrency", "1,2",
         "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    m = RATIOS.match(lines[-1])
    assert m, f"last line is not the ratios line: {lines[-1]!r}"
    assert "nan" not in m.groups(), lines[-1]  # all three systems ran at the top level
    final = lines[lines.index(next(x for x in lines if x.startswith("median of"))):]
    rows = [ROW.match(x) for x in final]
    seen = {(r.group(1), int(r.group(2))) for r in rows if r}
    systems = ("server", "server-torch", "server-ort", "naive", "bare")
    assert seen == {(s, c) for s in systems for c in (1, 2)}, final
    # Each server says which runtime it chose and how it split the CPUs.
    assert re.search(r"^server-b2: runtime (torch|onnxruntime) \(fp32\), threads \d+, decode workers \d+",
                     proc.stdout, re.M), proc.stdout
    for r in rows:
        if r:
            assert int(r.group(4)) == 0, f"errors in {r.group(0)}"  # every request answered 200
            assert float(r.group(5)) > 0


def test_raw_forward_bench_runs_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """The python half of bench/gpu.sh, tiny and on CPU (fp16 is downgraded to fp32 there)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bare
    finally:
        sys.path.remove(str(ROOT / "bench"))
    rc = bare.main(["raw", "--arch", "test_efficientnet", "--input-size", "32", "--device", "cpu",
                    "--precision", "fp16", "--batch-sizes", "1,2", "--seconds", "0.01",
                    "--runtimes", "torch-eager,torch-cuda-graphs,onnxruntime"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = re.findall(r"^(torch-eager|onnxruntime)\s+(\d+)\s+[\d.]+\s+[\d.]+$", out, re.M)
    assert sorted(rows) == [("onnxruntime", "1"), ("onnxruntime", "2"), ("torch-eager", "1"),
                            ("torch-eager", "2")], out  # the CUDA-only runtime is skipped on CPU
    assert re.search(r"^raw-p50-batch1-ms: torch-eager=[\d.]+ onnxruntime=[\d.]+$", out, re.M), out
    assert re.search(r"^raw-best: precision=fp16 runtime=\S+ batch=\d+ img_s=[\d.]+$", out, re.M), out


def test_jobs_bench_prints_table_and_ratios_line() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "jobs.py"), "--photos", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.match(r"^ratios: memory hit/miss=\d+\.\d\d job/detect=\d+\.\d\d "
                    r"redis hit/miss=\d+\.\d\d job/detect=\d+\.\d\d$", lines[-1]), lines[-1]
    assert [line.split()[0] for line in lines[-3:-1]] == ["memory", "redis"]


def test_video_bench_prints_table_and_ratio_lines() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "video.py"), "--videos", "1",
                           "--seconds", "2", "--fps", "12", "--frames", "4", "--requests", "2",
                           "--concurrency", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    rows = [re.match(r"^(faces|whole-frame)\s+(server|naive)\s+[\d.]+\s+\d+\s+\d+$", x) for x in lines]
    assert sorted((r.group(1), r.group(2)) for r in rows if r) == [
        ("faces", "naive"), ("faces", "server"), ("whole-frame", "naive"), ("whole-frame", "server")], lines
    assert re.match(r"^ratio server/naive videos/s \(faces card\): \d+\.\d\dx", lines[-3]), lines[-3]
    assert re.match(r"^ratio server/naive videos/s \(whole-frame card\): \d+\.\d\dx", lines[-2]), lines[-2]
    assert re.match(r"^ratio decode server/plain per video: \d+\.\d\dx", lines[-1]), lines[-1]


def test_faces_bench_prints_both_detectors() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "faces.py")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^(haar|hog)\s+(full|320)\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+$", proc.stdout, re.M)
    assert [(r[0], r[1]) for r in rows] == [("haar", "full"), ("haar", "320"), ("hog", "full"),
                                            ("hog", "320")]
    assert ("haar", "full", "1", "1", "0") in rows  # exactly the astronaut's face, nothing elsewhere
