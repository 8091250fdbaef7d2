"""`deepdetect-server evaluate`: score a labelled set through the serving path and gate on the result.

Every item goes through `Core.verdict`, the function behind /v1/detect and jobs: the card's preprocessing,
the runtime, the batcher (items are sent concurrently so batches form as under load), and whatever media
handling the core grows (faces, video aggregation). A copy of the preprocessing here could agree with
training and disagree with serving: the failure this command exists to catch.

Output: one JSON object (stdout, and `--output FILE`). Gates (`--min-auc`, ...) make the exit code 3 with
one line on stderr naming the failed gate and the margin; 1 is an error (unreadable set or checkpoint),
2 bad arguments. `--termination-log` also writes a compact summary (under Kubernetes' 4 KiB limit) for the
operator's validation Job, which reads it from the pod's termination message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import quality
from .checkpoint import card_from_bytes
from .dataset import Dataset, DatasetError, load_dataset
from .errors import DeepDetectError

EXIT_GATE_FAILED = 3
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


@dataclass(frozen=True)
class Gate:
    name: str  # the flag, e.g. "min-auc"
    metric: str  # key in the result
    bound: float
    minimum: bool  # True: metric >= bound passes

    def check(self, result: dict[str, Any]) -> str | None:
        """None when it passes, else one line saying by how much it failed."""
        value = result.get(self.metric)
        if value is None:
            return f"gate --{self.name} {self.bound:g} failed: {self.metric} is undefined on this set"
        ok = value >= self.bound if self.minimum else value <= self.bound
        if ok:
            return None
        margin = (self.bound - value) if self.minimum else (value - self.bound)
        relation = "below" if self.minimum else "above"
        return (
            f"gate --{self.name} {self.bound:g} failed: {self.metric} {value:.4f} is {margin:.4f} "
            f"{relation} it"
        )


GATE_FLAGS = (  # (flag, metric, minimum?)
    ("min-auc", "auc", True),
    ("max-log-loss", "log_loss", False),
    ("min-accuracy", "accuracy", True),
    ("min-precision", "precision", True),
    ("min-recall", "recall", True),
)


def gates_from_args(args: argparse.Namespace) -> list[Gate]:
    gates = []
    for flag, metric, minimum in GATE_FLAGS:
        bound = getattr(args, flag.replace("-", "_"))
        if bound is not None:
            gates.append(Gate(flag, metric, float(bound), minimum))
    return gates


async def score_dataset(core: Any, dataset: Dataset, concurrency: int) -> tuple[list[float], list[str]]:
    """Scores in item order, through `core.verdict`; errors as 'name: message' (the item gets no score)."""
    sem = asyncio.Semaphore(concurrency)
    scores: list[float | None] = [None] * len(dataset.items)
    errors: list[str] = []

    async def one(i: int) -> None:
        item = dataset.items[i]
        async with sem:
            try:
                verdict = await core.verdict(item.data, {}, None)
            except DeepDetectError as exc:
                errors.append(f"{item.name}: {exc}")
                return
        scores[i] = float(verdict.body["score"])

    await asyncio.gather(*(one(i) for i in range(len(dataset.items))))
    return [s if s is not None else float("nan") for s in scores], errors


async def evaluate(
    checkpoint: Path,
    dataset_path: Path,
    *,
    device: str = "cpu",
    runtime: str = "torch",
    precision: str = "fp32",
    threshold: float | None = None,
    concurrency: int = 0,
    max_batch_size: int = 16,
) -> dict[str, Any]:
    """Load the checkpoint into a Core, score the set, return the result object."""
    from .config import ServerSettings
    from .core import Core

    card = card_from_bytes(await asyncio.to_thread(checkpoint.read_bytes), str(checkpoint))
    dataset = load_dataset(dataset_path, (card.negative_label, card.positive_label))
    concurrency = concurrency or 2 * max_batch_size
    settings = ServerSettings(
        checkpoint=checkpoint,
        auth_mode="none",
        device=device,
        runtime=runtime,
        precision=precision,
        threshold=threshold,
        max_batch_size=max_batch_size,
        max_queue=max(256, concurrency),
        request_timeout_s=600.0,
        cache_enabled=False,
        jobs_enabled=False,
    )
    core = Core(settings)
    await core.start()
    try:
        scores, errors = await score_dataset(core, dataset, concurrency)
        used_threshold = core.threshold
        digest = core.digest
    finally:
        await core.stop(grace_s=5.0)
    labels = np.array([it.label for it in dataset.items])
    ok = ~np.isnan(np.array(scores))
    result: dict[str, Any] = {
        "checkpoint": {"digest": digest, "architecture": card.architecture},
        "dataset": {"digest": dataset.digest, "items": len(dataset.items), "counts": dataset.counts},
        **quality.summary(labels[ok], np.array(scores)[ok], used_threshold),
        "scored": int(ok.sum()),
        "errors": errors,
        "scores": [
            {"name": it.name, "label": it.label, "score": None if np.isnan(sc) else sc}
            for it, sc in zip(dataset.items, scores, strict=True)
        ],
    }
    return result


def compact(result: dict[str, Any], failed: str | None) -> str:
    """The termination message: metrics and verdict, always under TERMINATION_LIMIT bytes."""
    keep = {k: result.get(k) for k in ("auc", "log_loss", "accuracy", "precision", "recall", "threshold")}
    body: dict[str, Any] = {
        "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in keep.items()},
        "dataset": result.get("dataset", {}).get("digest", ""),
        "items": result.get("scored", 0),
        "errors": len(result.get("errors", [])),
        "passed": failed is None,
    }
    if failed:
        body["failed"] = failed[:1000]
    return json.dumps(body, separators=(",", ":"))[:TERMINATION_LIMIT]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="folder real/ fake/, a .csv/.jsonl manifest, or a packed .safetensors set",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON result here")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime", "auto"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="as the service serves it (fp16/bf16 fall back to fp32 on CPU)")
    parser.add_argument("--threshold", type=float, default=None, help="overrides the card's threshold")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=0, help="items in flight (default 2x batch)")
    parser.add_argument("--allow-errors", type=int, default=0, help="unscorable items tolerated (default 0)")
    parser.add_argument(
        "--termination-log",
        default="",
        help="write a compact summary here (Kubernetes: /dev/termination-log)",
    )
    for flag, metric, minimum in GATE_FLAGS:
        word = "at least" if minimum else "at most"
        parser.add_argument(
            f"--{flag}", type=float, default=None, help=f"fail unless {metric} is {word} this"
        )


def _write_termination(path: str, text: str) -> None:
    if path:
        try:
            Path(path).write_text(text)
        except OSError as exc:
            print(f"warning: cannot write {path}: {exc.strerror}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(
            evaluate(
                args.checkpoint,
                args.dataset,
                device=args.device,
                runtime=args.runtime,
                precision=args.precision,
                threshold=args.threshold,
                concurrency=args.concurrency,
                max_batch_size=args.batch_size,
            )
        )
    except (DatasetError, DeepDetectError, OSError) as exc:
        line = f"evaluation error: {exc}"
        print(line, file=sys.stderr)
        _write_termination(args.termination_log, json.dumps({"passed": False, "failed": line[:1000]}))
        return 1
    failed = None
    if len(result["errors"]) > args.allow_errors:
        failed = (
            f"{len(result['errors'])} items could not be scored (allowed {args.allow_errors}): "
            f"{result['errors'][0]}"
        )
    for gate in gates_from_args(args):
        failed = failed or gate.check(result)
    result["gates"] = {"passed": failed is None, "failed": failed}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    _write_termination(args.termination_log, compact(result, failed))
    if failed:
        print(failed, file=sys.stderr)
        return EXIT_GATE_FAILED
    return 0
