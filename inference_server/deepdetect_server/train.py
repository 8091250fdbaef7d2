"""`deepdetect-server train`: fine-tune a timm backbone on a labelled set into a complete checkpoint.

The contract with serving is the model card, so training starts from one: `--from CHECKPOINT` (its card
and weights), or a fresh card for `--arch/--input-size` built by the same `card_for_architecture` as
`checkpoint create`. Every field of that card flows into the output unchanged (preprocessing, faces...),
and only `threshold` and `training` are written here. Images become tensors through the serving
`Preprocessor` and `normalize_batch`, so the model sees in training the pixels it will see in serving;
the only extra is augmentation (a horizontal flip), and only in training. A card with a `faces` block is
trained on the face crops the serving code (`inputs.picture_inputs`: the card's detector, margin and
selection) cuts from each picture, every crop labelled as its picture; a picture is scored, as in serving,
by its most fake face, and pictures with no face are left out (and counted).

Deterministic for a seed (shuffles, flips and init come from seeded generators; torch is put in
deterministic mode), resumable (`--state FILE` after every epoch: weights, optimizer, epoch; loaded with
`weights_only=True`, so nothing is unpickled), CPU or CUDA. The threshold is the one with the best balanced
accuracy on the validation split, whose metrics go into the card with the data digest.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import quality
from .checkpoint import ModelCard, TrainingInfo, card_for_architecture, card_from_bytes, save_checkpoint
from .dataset import Dataset, DatasetError, load_dataset
from .errors import CheckpointError
from .inputs import picture_inputs
from .media import decode_rgb, open_image
from .preprocess import Preprocessor, normalize_batch
from .runtimes.base import probabilities

MAX_PIXELS = 40_000_000


def base_card(args: argparse.Namespace) -> tuple[ModelCard, dict[str, torch.Tensor] | None]:
    """The card to train under and the weights to start from (None: random init, or --init)."""
    if args.from_checkpoint:
        from safetensors.torch import load

        data = Path(args.from_checkpoint).read_bytes()
        return card_from_bytes(data, str(args.from_checkpoint)), load(data)
    if not args.arch or not args.input_size:
        raise CheckpointError("give --from CHECKPOINT, or --arch and --input-size")
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    card = card_for_architecture(
        args.arch,
        args.input_size,
        labels=labels,
        positive_label=labels[-1],
        num_outputs=args.num_outputs,
        resize=args.resize,
        faces={"detector": args.faces} if args.faces else None,
    )
    return card, None


def build_model(
    card: ModelCard, start: dict[str, torch.Tensor] | None, init: Path | None, seed: int
) -> tuple[torch.nn.Module, str]:
    import timm
    from safetensors.torch import load_file

    torch.manual_seed(seed)
    model = timm.create_model(card.architecture, pretrained=False, num_classes=card.num_outputs)
    state = model.state_dict()
    source = ""
    given = start if start is not None else (load_file(str(init)) if init else None)
    if given is not None:
        usable = {k: v for k, v in given.items() if k in state and state[k].shape == v.shape}
        state.update(usable)
        model.load_state_dict(state)
        source = init.name if init else "from-checkpoint"
    return model, source


class Inputs:
    """The model inputs of a set's pictures as serving cuts them: uint8 NHWC `x`, label `y` (1 = positive)
    and `owner` (the picture each input came from); `labels` per picture that gave at least one input."""

    def __init__(self, dataset: Dataset, prep: Preprocessor, card: ModelCard) -> None:
        xs: list[np.ndarray] = []
        owners: list[int] = []
        for i, item in enumerate(dataset.items):
            for arr in picture_arrays(item.data, prep, card):
                xs.append(arr)
                owners.append(i)
        if not xs:
            raise DatasetError("no picture of the set gave a model input (no face found in any)")
        item_labels = np.array([it.label for it in dataset.items], dtype=np.int64)
        self.x = np.stack(xs)
        self.owner = np.array(owners, dtype=np.int64)
        self.y = item_labels[self.owner]
        self.pictures = np.unique(self.owner)  # sorted: the pictures that are scored
        self.labels = item_labels[self.pictures]
        self.without_input = len(dataset.items) - len(self.pictures)

    def per_picture(self, scores: np.ndarray) -> np.ndarray:
        """A picture's score is its most fake input (serving's rule for a frame with several faces)."""
        best = np.full(int(self.owner.max()) + 1, -np.inf)
        np.maximum.at(best, self.owner, scores)
        return best[self.pictures]


def picture_arrays(data: bytes, prep: Preprocessor, card: ModelCard) -> list[np.ndarray]:
    """The serving path of one still image: the whole picture, or one input per face the card selects."""
    if card.faces is None:
        return [prep(data)]
    rgb, _ = decode_rgb(open_image(data, MAX_PIXELS))
    return [arr for _, arr in picture_inputs(np.asarray(rgb), card, prep).inputs]


class Trainer:
    def __init__(self, card: ModelCard, model: torch.nn.Module, device: torch.device, lr: float) -> None:
        self.card, self.model, self.device = card, model.to(device), device
        self.mean = torch.tensor(card.mean, device=device)
        self.std = torch.tensor(card.std, device=device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=1e-4)

    def _inputs(self, batch: np.ndarray) -> torch.Tensor:
        return normalize_batch(torch.from_numpy(batch).to(self.device), self.mean, self.std).contiguous()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.card.num_outputs == 1:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
        # Class index of each label in the card's order: 1 (positive) -> positive_index.
        pos = self.card.positive_index
        target = torch.where(labels == 1, pos, 1 - pos)
        return torch.nn.functional.cross_entropy(logits, target)

    def epoch(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int) -> float:
        gen = np.random.default_rng(seed)
        order = gen.permutation(len(images))
        self.model.train()
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm cannot train on one image
            batch = images[idx].copy()
            flip = gen.random(len(idx)) < 0.5  # augmentation, training only
            batch[flip] = batch[flip][:, :, ::-1]
            y = torch.from_numpy(labels[idx]).to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(self.model(self._inputs(batch)), y)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(idx)
        return total / max(1, len(order))

    @torch.inference_mode()
    def scores(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        self.model.eval()
        out = [
            self.model(self._inputs(images[i : i + batch_size])).float().cpu().numpy()
            for i in range(0, len(images), batch_size)
        ]
        return probabilities(np.concatenate(out), self.card)

    def save_state(self, path: Path, epoch: int) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(
            {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, tmp
        )
        tmp.replace(path)  # a crash mid-write never leaves a half state file

    def load_state(self, path: Path) -> int:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        return int(state["epoch"])


def train(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    torch.use_deterministic_algorithms(True, warn_only=True)
    card, start = base_card(args)
    dataset = load_dataset(args.dataset, (card.negative_label, card.positive_label))
    train_set, val_set = dataset.split(args.val_fraction, args.seed)
    if not train_set.items or not val_set.items:
        raise DatasetError("the set is too small to split into training and validation items")
    prep = Preprocessor(card, MAX_PIXELS)
    train_in, val_in = Inputs(train_set, prep, card), Inputs(val_set, prep, card)
    for name, part in (("training", train_in), ("validation", val_in)):
        if part.without_input:
            log(f"{name}: {part.without_input} of {part.without_input + len(part.pictures)} pictures "
                "have no face the card's detector finds: left out")
    val_y = val_in.labels
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    model, init_source = build_model(card, start, args.init, args.seed)
    trainer = Trainer(card, model, device, args.lr)
    first = 0
    if args.state and args.state.exists():
        first = trainer.load_state(args.state)
        log(f"resumed from {args.state} after epoch {first}")
    for epoch in range(first, args.epochs):
        started = time.perf_counter()
        # Cosine decay from the epoch number alone: a resumed run gets the same rate as an unbroken one.
        for group in trainer.optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
        loss = trainer.epoch(train_in.x, train_in.y, args.batch_size, seed=args.seed * 1000 + epoch)
        val_scores = val_in.per_picture(trainer.scores(val_in.x))
        auc = quality.roc_auc(val_y, val_scores)
        shown = "n/a" if auc is None else f"{auc:.4f}"
        took = time.perf_counter() - started
        log(f"epoch {epoch + 1}/{args.epochs}  loss {loss:.4f}  val_auc {shown}  {took:.1f}s")
        if args.state:
            trainer.save_state(args.state, epoch + 1)
    val_scores = val_in.per_picture(trainer.scores(val_in.x))
    threshold = quality.best_threshold(val_y, val_scores)
    metrics = quality.summary(val_y, val_scores, threshold)
    info = TrainingInfo(
        dataset_digest=dataset.digest,
        train_items=len(train_set.items),
        val_items=len(val_set.items),
        epochs=args.epochs,
        seed=args.seed,
        init=init_source,
        val_metrics={k: metrics[k] for k in ("auc", "log_loss", "accuracy", "precision", "recall")},
    )
    # Copy, never rebuild: every field of the base card (preprocessing, faces...) reaches serving as is.
    out_card = card.model_copy(update={"threshold": round(threshold, 6), "training": info})
    out_card = ModelCard.model_validate(out_card.model_dump())
    digest = save_checkpoint(args.out, {k: v.cpu() for k, v in trainer.model.state_dict().items()}, out_card)
    return {
        "out": str(args.out),
        "digest": digest,
        "threshold": out_card.threshold,
        "val_metrics": info.val_metrics,
        "dataset_digest": dataset.digest,
        "train_items": info.train_items,
        "val_items": info.val_items,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="folder real/ fake/, manifest or pack")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint to write")
    parser.add_argument(
        "--from", dest="from_checkpoint", type=Path, help="start from this checkpoint's card and weights"
    )
    parser.add_argument("--arch", default="", help="timm model name (without --from)")
    parser.add_argument("--input-size", type=int, default=0)
    parser.add_argument("--labels", default="real,fake", help="negative,positive (without --from)")
    parser.add_argument("--num-outputs", type=int, choices=(1, 2), default=2)
    parser.add_argument("--resize", choices=("crop", "pad"), default="crop")
    parser.add_argument("--faces", choices=("haar", "hog"), default="",
                        help="(without --from) crop faces with this detector, in training and serving")
    parser.add_argument("--init", type=Path, help="local .safetensors weights to start from (no downloads)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--state", type=Path, help="resume from / save to this state file after each epoch")
    parser.add_argument(
        "--publish", default="", help="then upload to file://, s3:// or http(s):// (+ .sha256)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        result = train(args, log=lambda line: print(line, file=sys.stderr, flush=True))
        if args.publish:
            from .publish import publish

            result["published"] = publish(args.out, args.publish)
    except (DatasetError, CheckpointError, OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
