"""Is a runtime's answer the reference's answer? One rule, for every runtime and device.

A faster runtime is only worth having if it scores what torch scores. The check compares on the warm-up
batch: the largest probability difference (what a client sees) and the largest logit difference relative
to the logits' own scale (what catches a wrong graph even when a random-init head squeezes every
probability towards 0.5). Both must be within the tolerance for the precision, else the server refuses to
become ready.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import StartupError

# (max |Δ probability|, max |Δ logit| / max |reference logit|) per precision the runtime runs in.
# fp32 runtimes agree with torch to ~1e-6 here; half precision legitimately drifts a little.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-3, 1e-3),
    "fp16": (1e-2, 5e-2),
    "bf16": (2e-2, 1e-1),
}


@dataclass(frozen=True)
class ParityReport:
    runtime: str
    max_prob_diff: float
    max_rel_logit_diff: float
    prob_tolerance: float
    rel_logit_tolerance: float

    @property
    def ok(self) -> bool:
        return (self.max_prob_diff <= self.prob_tolerance
                and self.max_rel_logit_diff <= self.rel_logit_tolerance)

    def describe(self) -> str:
        return (f"{self.runtime}: max |Δscore| {self.max_prob_diff:.2e} (limit {self.prob_tolerance:.0e}), "
                f"max relative |Δlogit| {self.max_rel_logit_diff:.2e} (limit {self.rel_logit_tolerance:.0e})")


def compare(
    runtime: str,
    reference_logits: np.ndarray,
    candidate_logits: np.ndarray,
    reference_probs: np.ndarray,
    candidate_probs: np.ndarray,
    precision: str = "fp32",
    prob_tolerance: float | None = None,
) -> ParityReport:
    """Differences between a candidate and the reference on the same batch, against the tolerances."""
    ref = np.asarray(reference_logits, dtype=np.float64)
    cand = np.asarray(candidate_logits, dtype=np.float64)
    if ref.shape != cand.shape:
        raise StartupError(f"{runtime}: output shape {cand.shape} differs from torch's {ref.shape}")
    if not np.all(np.isfinite(cand)):
        limits = TOLERANCES.get(precision, TOLERANCES["fp32"])
        return ParityReport(runtime, float("inf"), float("inf"), *limits)
    scale = max(float(np.abs(ref).max()), 1e-12)
    prob_tol, rel_tol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    if prob_tolerance is not None:
        prob_tol = prob_tolerance
    return ParityReport(
        runtime=runtime,
        max_prob_diff=float(np.abs(np.asarray(reference_probs) - np.asarray(candidate_probs)).max()),
        max_rel_logit_diff=float(np.abs(ref - cand).max() / scale),
        prob_tolerance=prob_tol,
        rel_logit_tolerance=rel_tol,
    )


def require(report: ParityReport, source: str) -> None:
    """Refuse to start on a mismatch, saying which runtime, by how much, and where its graph came from."""
    if not report.ok:
        raise StartupError(
            f"runtime parity check failed: {report.describe()} against torch on the warm-up batch "
            f"({source}). The graph does not compute this checkpoint's model: refusing to become ready. "
            "Remove or re-export the graph, or set runtime: torch."
        )
