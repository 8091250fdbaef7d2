"""Face detectors on real photos: what each finds on skimage's astronaut, and what it costs.

Prints, per detector (and per `detect_size`), the boxes on the astronaut, the boxes found on photos
without a face (coffee, rocket, chelsea: all false positives), and the median time per photo. The card's
default (Haar, detect_size 320) comes from this table.

Run: `python bench/faces.py` (a few seconds).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "inference_server"))

from deepdetect_server.checkpoint import FacesSpec  # noqa: E402
from deepdetect_server.faces import detect_scaled  # noqa: E402
from skimage import data  # noqa: E402

ASTRONAUT_FACE = (170, 60, 280, 170)


def inside(box: tuple[int, int, int, int]) -> bool:
    r = ASTRONAUT_FACE
    return r[0] <= box[0] and r[1] <= box[1] and box[2] <= r[2] and box[3] <= r[3]


def main() -> int:
    astronaut = data.astronaut()
    empty = {"coffee": data.coffee(), "rocket": data.rocket(), "chelsea": data.chelsea()}
    print(f"{'detector':8} {'detect_size':>11} {'astronaut':>10} {'true':>5} {'false+':>7} {'ms/photo':>9}")
    for name in ("haar", "hog"):
        for size in (0, 320):
            spec = FacesSpec(detector=name, detect_size=size)
            boxes = detect_scaled(astronaut, spec)
            false_pos = sum(not inside(b) for b in boxes)
            false_pos += sum(len(detect_scaled(img, spec)) for img in empty.values())
            times = []
            for _ in range(5):
                t = time.perf_counter()
                detect_scaled(astronaut, spec)
                times.append(time.perf_counter() - t)
            print(f"{name:8} {size or 'full':>11} {len(boxes):>10} {sum(map(inside, boxes)):>5} "
                  f"{false_pos:>7} {statistics.median(times) * 1000:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
