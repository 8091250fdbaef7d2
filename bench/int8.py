"""int8 against fp32 on ONNX Runtime (CPU): forward speed-up and score drift on held-out real photos.

Builds a random-init checkpoint, exports it, quantizes it on a calibration half of the photos exactly as
the server does (`runtimes.int8.quantize`), and times both graphs at batch 1 and 8 with the given threads,
interleaved (fp32, int8, fp32, ...; median per point), so load from other users hits both alike.

Drift needs scores that move: a random-init head maps every photo to about 0.5, where no quantization
error can show. So the drift is measured twice: on the checkpoint as built, and with its classifier
weights scaled until held-out scores spread across 0..1 (`--head-scale`, reported with the scores' spread)
— a stand-in for a trained detector's confident head. Both lines are printed; neither is a trained model.

    python bench/int8.py --arch efficientnet_b0 --input-size 224 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bare import make_checkpoint  # noqa: E402
from server import make_photos  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="efficientnet_b0")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--photos", type=int, default=64, help="half calibrate, half are held out")
    p.add_argument("--head-scale", type=float, default=3000.0)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    import torch
    from deepdetect_server.checkpoint import load_checkpoint
    from deepdetect_server.model import Detector
    from deepdetect_server.preprocess import Preprocessor
    from deepdetect_server.runtimes.base import probabilities, warm_batch
    from deepdetect_server.runtimes.int8 import drift, quantize
    from deepdetect_server.runtimes.onnx_export import export_onnx
    from deepdetect_server.runtimes.ort import OnnxRuntime

    with tempfile.TemporaryDirectory(prefix="deepdetect-int8-") as tmp:
        ckpt = Path(tmp) / "m.safetensors"
        make_checkpoint(ckpt, args.arch, args.input_size, "reduced")
        loaded = load_checkpoint(ckpt)
    card = loaded.card
    pre = Preprocessor(card, 10**8)
    images = np.stack([pre(j) for j in make_photos(args.photos, 300, 1400)])
    calib, held = images[0::2], images[1::2]
    det = Detector(card, loaded.tensors, device="cpu", cpu_threads=args.threads)

    def graphs() -> tuple[OnnxRuntime, OnnxRuntime, float]:
        fp32 = export_onnx(det.model, card)
        t0 = time.perf_counter()
        int8 = quantize(fp32, calib)
        q_s = time.perf_counter() - t0
        return (OnnxRuntime(fp32, card, threads=args.threads),
                OnnxRuntime(int8, card, threads=args.threads, name="int8", precision="int8"), q_s)

    fp32_rt, int8_rt, quant_s = graphs()
    print(f"{args.arch} {args.input_size}px, ONNX Runtime CPU, {args.threads} threads; quantization took "
          f"{quant_s:.1f} s on {len(calib)} calibration images")
    print(f"{'batch':>5} {'fp32 img/s':>11} {'int8 img/s':>11} {'int8/fp32':>9}")
    for n in (1, 8):
        batch = warm_batch(card, n, seed=n)
        rates: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(args.rounds):
            for name, rt in (("fp32", fp32_rt), ("int8", int8_rt)):
                rt.logits(batch)
                t0 = time.perf_counter()
                reps = max(2, 16 // n)
                for _ in range(reps):
                    rt.logits(batch)
                rates[name].append(reps * n / (time.perf_counter() - t0))
        f, q = statistics.median(rates["fp32"]), statistics.median(rates["int8"])
        print(f"{n:>5} {f:>11.1f} {q:>11.1f} {q / f:>9.2f}", flush=True)

    def drift_line(label: str) -> None:
        a = probabilities(fp32_rt.logits(held), card)
        b = probabilities(int8_rt.logits(held), card)
        r = drift(a, b, None, 0.05, 0.01)
        print(f"drift ({label}): {r.describe()}; fp32 scores span {a.min():.3f}..{a.max():.3f} "
              f"(std {a.std():.3f})")

    drift_line("random-init head")
    with torch.no_grad():
        det.model.get_classifier().weight.mul_(args.head_scale)
    fp32_rt, int8_rt, _ = graphs()
    drift_line(f"classifier weights x{args.head_scale:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
