"""Checkpoint files: card round-trip, digest pin, no pickle, CLI create/inspect, both head shapes."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from deepdetect_server import cli
from deepdetect_server.checkpoint import (
    CARD_KEY,
    ModelCard,
    card_for_architecture,
    card_from_bytes,
    create_checkpoint,
    load_checkpoint,
)
from deepdetect_server.errors import CheckpointError
from deepdetect_server.model import Detector
from safetensors.torch import save_file
from server_helpers import ARCH, make_checkpoint

pytestmark = pytest.mark.timeout(60)


def test_roundtrip_keeps_card_tensors_and_digest(tmp_path: Path) -> None:
    card = card_for_architecture(ARCH, 128, labels=["genuine", "deepfake"], positive_label="deepfake",
                                 threshold=0.7, resize="pad", decode="reduced", version="3")
    path = tmp_path / "m.safetensors"
    digest, fresh = create_checkpoint(path, card)
    assert fresh == []
    loaded = load_checkpoint(path)
    assert loaded.card == card
    assert loaded.digest == digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    import timm

    expected = timm.create_model(ARCH, pretrained=False, num_classes=2).state_dict()
    assert set(loaded.tensors) == set(expected)
    assert all(loaded.tensors[k].shape == v.shape for k, v in expected.items())


def test_card_defaults_come_from_timm() -> None:
    import timm
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(timm.create_model(ARCH, pretrained=False))
    card = card_for_architecture(ARCH, 160)
    assert card.mean == tuple(cfg["mean"]) and card.std == tuple(cfg["std"])
    assert card.crop_pct == cfg["crop_pct"] and card.interpolation == cfg["interpolation"]


@pytest.mark.parametrize("pin_form", ["hex", "prefixed", "upper"])
def test_matching_pin_loads(checkpoint: Path, pin_form: str) -> None:
    hexd = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    pin = {"hex": hexd, "prefixed": f"sha256:{hexd}", "upper": f"SHA256:{hexd.upper()}"}[pin_form]
    assert load_checkpoint(checkpoint, pin).digest == f"sha256:{hexd}"


def test_pin_mismatch_is_refused_with_both_digests(checkpoint: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(CheckpointError, match="does not match its pinned digest") as err:
        load_checkpoint(checkpoint, wrong)
    assert f"sha256:{wrong}" in err.value.message
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() in err.value.message


def test_nothing_is_unpickled(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    assert load_checkpoint(checkpoint).card.architecture == ARCH
    # A torch.save (pickle) file is simply not a checkpoint.
    pickled = tmp_path / "evil.pt"
    pickled.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(pickled)


def test_safetensors_without_card_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=CARD_KEY):
        load_checkpoint(path)


def test_invalid_card_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={CARD_KEY: json.dumps({"architecture": ARCH})})
    with pytest.raises(CheckpointError, match="invalid model card"):
        card_from_bytes(path.read_bytes())


def test_card_rejects_positive_label_outside_labels() -> None:
    with pytest.raises(ValueError, match="positive_label"):
        ModelCard(architecture=ARCH, input_size=64, mean=(0, 0, 0), std=(1, 1, 1), labels=["a", "b"])


def test_cli_create_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.safetensors"
    assert cli.main(["checkpoint", "create", "--arch", ARCH, "--input-size", "96", "--out", str(out),
                     "--labels", "real,fake", "--threshold", "0.3", "--decode", "reduced",
                     "--num-outputs", "1"]) == 0
    assert "sha256:" in capsys.readouterr().out
    assert cli.main(["checkpoint", "inspect", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["digest"] == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    assert shown["card"]["input_size"] == 96 and shown["card"]["threshold"] == 0.3
    assert shown["card"]["decode"] == "reduced" and shown["card"]["num_outputs"] == 1


def test_cli_create_writes_the_faces_and_aggregation_blocks(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "faces.safetensors"
    assert cli.main(["checkpoint", "create", "--arch", ARCH, "--input-size", "64", "--out", str(out),
                     "--faces", "hog", "--face-margin", "0.5", "--aggregation", "topk", "--frames", "8"]) == 0
    capsys.readouterr()
    assert cli.main(["checkpoint", "inspect", str(out)]) == 0
    card = json.loads(capsys.readouterr().out)["card"]
    assert card["faces"]["detector"] == "hog" and card["faces"]["margin"] == 0.5
    assert card["aggregation"]["rule"] == "topk" and card["aggregation"]["frames"] == 8
    plain = tmp_path / "plain.safetensors"
    assert cli.main(["checkpoint", "create", "--arch", ARCH, "--input-size", "64", "--out", str(plain)]) == 0
    capsys.readouterr()
    assert cli.main(["checkpoint", "inspect", str(plain)]) == 0
    assert json.loads(capsys.readouterr().out)["card"]["faces"] is None  # whole picture, as before


def test_cli_create_with_init_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import timm

    backbone = timm.create_model(ARCH, pretrained=False, num_classes=1000)  # e.g. ImageNet weights
    init = tmp_path / "init.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(init))
    out = tmp_path / "tuned.safetensors"
    assert cli.main(["checkpoint", "create", "--arch", ARCH, "--input-size", "96", "--out", str(out),
                     "--init", str(init)]) == 0
    assert "left at random init" in capsys.readouterr().err  # the 1000-class head does not fit 2 classes
    loaded = load_checkpoint(out)
    conv = next(k for k in loaded.tensors if k.startswith("conv_stem"))
    assert torch.equal(loaded.tensors[conv], backbone.state_dict()[conv])


def test_cli_inspect_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert cli.main(["checkpoint", "inspect", str(bad)]) == 1
    assert "not a safetensors file" in capsys.readouterr().err


@pytest.mark.parametrize("num_outputs", [1, 2])
def test_one_logit_and_two_class_heads(tmp_path: Path, num_outputs: int) -> None:
    path = make_checkpoint(tmp_path / "h.safetensors", 64, num_outputs=num_outputs)
    loaded = load_checkpoint(path)
    det = Detector(loaded.card, loaded.tensors, device="cpu")
    batch = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    scores = det.predict(batch)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    from deepdetect_server.preprocess import normalize_batch

    with torch.inference_mode():
        logits = det.model(normalize_batch(batch, det.mean, det.std).contiguous())
    expected = (torch.sigmoid(logits[:, 0]) if num_outputs == 1
                else torch.softmax(logits, 1)[:, loaded.card.positive_index])
    assert torch.allclose(torch.tensor(scores), expected, atol=1e-6)


def test_cpu_downgrades_half_precision(checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_checkpoint(checkpoint)
    det = Detector(loaded.card, loaded.tensors, device="cpu", precision="fp16")
    assert det.precision == "fp32"
    assert "precision downgraded" in caplog.text
    assert not det.model.training


def test_tensors_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.safetensors", 64)
    loaded = load_checkpoint(path)
    wrong = loaded.card.model_copy(update={"architecture": "test_resnet"})
    with pytest.raises(CheckpointError, match="do not fit test_resnet"):
        Detector(wrong, loaded.tensors, device="cpu")


def test_cpu_threads_follow_the_setting_on_the_forward_thread(checkpoint: Path) -> None:
    import threading

    from deepdetect_server.model import available_cpus

    loaded = load_checkpoint(checkpoint)
    assert Detector(loaded.card, loaded.tensors, device="cpu").cpu_threads == max(1, available_cpus() // 2)
    det = Detector(loaded.card, loaded.tensors, device="cpu", cpu_threads=1)
    seen: list[int] = []

    def forward() -> None:
        det.predict(torch.zeros((1, 160, 160, 3), dtype=torch.uint8))
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=forward)
    t.start()
    t.join()
    assert seen == [1]


def test_card_matching_the_service_is_accepted(checkpoint: Path) -> None:
    from deepdetect_server.checkpoint import check_card_matches
    card = load_checkpoint(checkpoint).card
    check_card_matches(card, ARCH, card.input_size)
    check_card_matches(card)  # nothing declared: nothing to contradict
    with pytest.raises(CheckpointError, match=r"spec\.model\.architecture"):
        check_card_matches(card, "resnet50")
