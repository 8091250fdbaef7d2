"""The naive design of the original production guide, kept as the benchmark's baseline (issue 2, item 8).

One plain FastAPI endpoint, written the way the guide's Flask `/analyze` route reads: take the upload,
`Image.open(...).convert("RGB")` at FULL size, run the full-size picture through torchvision's
Resize + CenterCrop + ToTensor + Normalize, and do one forward pass per request. The endpoint is a plain
`def`, so FastAPI runs it in its thread pool, as a naive user would write it.

It is deliberately not optimised: no batching, no reduced-size JPEG decode, no input hardening. It only
shares what makes the comparison fair with the real server: the same checkpoint (weights and model card,
read through `deepdetect_server.checkpoint`), the same preprocessing geometry (the card's input size,
crop_pct, interpolation, mean/std), and the same torch thread count (torch reads `OMP_NUM_THREADS`,
which the benchmark sets identically for every process it starts).

Run: `python bench/naive_server.py --checkpoint FILE --port 8081`, then `curl -F file=@x.jpg
127.0.0.1:8081/v1/detect`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import timm
import torch
import uvicorn
from deepdetect_server.checkpoint import load_checkpoint
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from torchvision import transforms

_INTERPOLATION = {
    "nearest": transforms.InterpolationMode.NEAREST,
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "lanczos": transforms.InterpolationMode.LANCZOS,
    "box": transforms.InterpolationMode.BOX,
    "hamming": transforms.InterpolationMode.HAMMING,
}


def create_app(checkpoint: Path | str) -> FastAPI:
    """The guide's server: a model global to the app and one synchronous endpoint."""
    loaded = load_checkpoint(checkpoint)
    card = loaded.card
    if card.resize != "crop":
        raise SystemExit("the naive server implements the guide's resize + center crop only")
    model = timm.create_model(card.architecture, pretrained=False, num_classes=card.num_outputs)
    model.load_state_dict(loaded.tensors)
    model.eval()
    # The usual torchvision recipe; with the card's numbers it is timm's eval transform for "crop" cards.
    preprocess = transforms.Compose([
        transforms.Resize(math.floor(card.input_size / card.crop_pct),
                          interpolation=_INTERPOLATION[card.interpolation]),
        transforms.CenterCrop(card.input_size),
        transforms.ToTensor(),
        transforms.Normalize(card.mean, card.std),
    ])
    app = FastAPI(title="naive DeepDetect (production guide)")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/detect")
    def detect(file: UploadFile = File(...)) -> dict[str, Any]:
        image = Image.open(file.file).convert("RGB")  # full-size decode, whatever the upload's size
        x = preprocess(image).unsqueeze(0)
        with torch.no_grad():
            logits = model(x)
        if card.num_outputs == 1:
            score = torch.sigmoid(logits[0, 0]).item()
        else:
            score = torch.softmax(logits, dim=1)[0, card.positive_index].item()
        label = card.positive_label if score >= card.threshold else card.negative_label
        return {"label": label, "score": score}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    uvicorn.run(create_app(args.checkpoint), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
