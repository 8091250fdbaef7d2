"""`make demo-train`: the train -> evaluate -> serve loop on 2 CPU cores in a few minutes, offline.

1. `toyset`: untouched and manipulated crops of scikit-image's photos (a training set, and a held-out set
   made with another seed: new crops and new manipulations, never seen in training);
2. `train`: a small timm network from random init (no downloads), threshold chosen on its validation split;
3. `evaluate` on the held-out set, through the serving path, with a gate;
4. `serve` the checkpoint and send one held-out untouched and one held-out manipulated image to /v1/detect.

What the toy detector detects: a region that was resampled and blended back (its fine detail is gone).
What it does not: real deepfakes (GAN/diffusion faces, re-enactment, lip-sync); it has seen 11 photos.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from .demo import free_port, wait_ready

ARCH, SIZE, IMAGE = "test_resnet", 64, 67  # 67 px images: 64 / crop_pct 0.95, so no resampling at serving
TRAIN_COUNT = int(os.environ.get("DEMO_TRAIN_COUNT", "400"))
HELDOUT_COUNT = 50
EPOCHS = int(os.environ.get("DEMO_TRAIN_EPOCHS", "30"))
WHAT = (
    "This toy detector learns ONE trace: a region of a photo resampled and blended back (lost fine "
    "detail). It knows nothing about real deepfakes (GAN or diffusion faces, re-enactment, lip-sync)."
)


def step(title: str, args: list[str], capture: bool = True) -> str:
    shown = " ".join(a if len(a) < 60 else "..." + a[-40:] for a in args)
    print(f"\n== {title} ==\n   deepdetect-server {shown}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "deepdetect_server.cli", *args],
        check=False,
        stdout=subprocess.PIPE if capture else None,
        text=True,
    )
    if done.returncode not in (0, 3):
        raise SystemExit(f"step failed ({done.returncode}): {title}")
    return done.stdout or ""


def main() -> int:
    print(WHAT)
    with tempfile.TemporaryDirectory(prefix="deepdetect-demo-train-") as tmp:
        root = Path(tmp)
        step(
            "generate a labelled training set",
            [
                "toyset",
                "--out",
                str(root / "train"),
                "--count",
                str(TRAIN_COUNT),
                "--size",
                str(IMAGE),
                "--seed",
                "0",
            ],
        )
        step(
            "generate a held-out set (another seed)",
            [
                "toyset",
                "--out",
                str(root / "heldout"),
                "--count",
                str(HELDOUT_COUNT),
                "--size",
                str(IMAGE),
                "--seed",
                "1",
            ],
        )
        ckpt = root / "toy.safetensors"
        out = step(
            f"train {ARCH} ({SIZE} px, {EPOCHS} epochs, random init, CPU)",
            [
                "train",
                "--dataset",
                str(root / "train"),
                "--out",
                str(ckpt),
                "--arch",
                ARCH,
                "--input-size",
                str(SIZE),
                "--epochs",
                str(EPOCHS),
                "--lr",
                "3e-3",
                "--seed",
                "0",
            ],
        )
        trained = json.loads(out)
        print(
            f"   validation AUC {trained['val_metrics']['auc']:.3f}, threshold {trained['threshold']:.3f}, "
            f"checkpoint {trained['digest'][:19]}..."
        )
        out = step(
            "evaluate on the held-out set (the serving path), gate --min-auc 0.8",
            [
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--dataset",
                str(root / "heldout"),
                "--min-auc",
                "0.8",
                "--output",
                str(root / "heldout.json"),
            ],
        )
        result = json.loads(out)
        print(
            f"   held-out AUC {result['auc']:.3f}  log-loss {result['log_loss']:.3f}  accuracy "
            f"{result['accuracy']:.3f}  precision {result['precision']:.3f}  recall {result['recall']:.3f}  "
            f"({result['scored']} images; gate {'passed' if result['gates']['passed'] else 'FAILED'})"
        )
        print(f"   at the card's threshold: {result['tp']}/{result['tp'] + result['fn']} manipulated images "
              f"flagged fake, {result['tn']}/{result['tn'] + result['fp']} untouched ones passed as real")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        print(f"\n== serve it on {base} and ask about two held-out images ==")
        env = {**os.environ, "DEEPDETECT_SHUTDOWN_DRAIN_S": "0"}
        with (root / "server.log").open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "deepdetect_server.cli",
                    "serve",
                    "--checkpoint",
                    str(ckpt),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--device",
                    "cpu",
                    "--runtime",
                    "torch",
                ],
                stderr=log_file,
                env=env,
            )
            try:
                wait_ready(base, proc)
                for label in ("real", "fake"):
                    folder = root / "heldout" / label
                    image = (sorted(folder.glob("*astronaut*.jpg")) or sorted(folder.glob("*.jpg")))[0]
                    resp = httpx.post(
                        f"{base}/v1/detect",
                        files={"file": (image.name, image.read_bytes(), "image/jpeg")},
                        timeout=30,
                    )
                    body = resp.json()
                    print(
                        f"   {label}/{image.name}: label {body['label']!r} score {body['score']:.3f} "
                        f"(threshold {body['threshold']:.3f})"
                    )
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        print("\n" + WHAT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
