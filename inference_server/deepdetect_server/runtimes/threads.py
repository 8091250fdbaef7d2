"""How many CPUs the forward pass gets and how many decode threads feed it, from measured costs.

A fixed split is wrong for someone: on the decode-bound 160 px test model the forward pass is a third of
the work and one intra-op thread is best; on EfficientNet-B0 at 224 px the forward pass is most of it and
starving it of the second core costs a quarter of the throughput. So at start-up the server measures the
cost of one decode (the serving `Preprocessor` on a typical photo) and of the forward pass at each
candidate thread count, and picks the count whose predicted throughput is highest:

    rate(t) = min(cpus / (decode + t * forward(t)),   the CPUs are shared by both
                  1 / forward(t))                     the forward thread runs one batch at a time

`forward(t)` is wall seconds per image with t threads (t threads are busy that long). Decode threads are
then the fewest that keep up with that rate, with a margin for bursts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadPlan:
    threads: int
    decode_workers: int
    predicted_img_s: float
    bound: str  # "forward" when one forward thread is the limit, "cpu" when the cores are

    def as_dict(self) -> dict[str, float | int | str]:
        return {"threads": self.threads, "decode_workers": self.decode_workers,
                "predicted_img_s": round(self.predicted_img_s, 1), "bound": self.bound}


def candidate_threads(cpus: int) -> list[int]:
    """1, half and all of the CPUs: enough points to find the knee without minutes of timing."""
    return sorted({1, max(1, cpus // 2), cpus})


def predicted_rate(cpus: int, decode_s: float, threads: int, forward_s: float) -> tuple[float, str]:
    cpu_bound = cpus / max(1e-9, decode_s + threads * forward_s)
    forward_bound = 1.0 / max(1e-9, forward_s)
    return (cpu_bound, "cpu") if cpu_bound < forward_bound else (forward_bound, "forward")


def plan_threads(cpus: int, decode_s: float, forward_s: Mapping[int, float], *,
                 fixed_threads: int = 0, fixed_workers: int = 0, burst_margin: float = 2.0) -> ThreadPlan:
    """The best thread count among the measured ones (or the fixed one), and decode workers to match."""
    if not forward_s:
        raise ValueError("no forward-pass measurement to plan from")
    options = {t: s for t, s in forward_s.items() if not fixed_threads or t == fixed_threads}
    if not options:  # a fixed count that was not measured: use the nearest measured cost
        nearest = min(forward_s, key=lambda t: abs(t - fixed_threads))
        options = {fixed_threads: forward_s[nearest]}
    best_t = max(options, key=lambda t: (predicted_rate(cpus, decode_s, t, options[t])[0], -t))
    rate, bound = predicted_rate(cpus, decode_s, best_t, options[best_t])
    workers = fixed_workers or min(cpus, max(1, math.ceil(rate * decode_s * burst_margin)))
    return ThreadPlan(best_t, workers, rate, bound)
