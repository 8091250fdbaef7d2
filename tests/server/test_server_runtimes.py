"""Runtimes: selection, the parity check, the ONNX cache by digest, int8 behind its drift gate.

Real models (timm test_efficientnet, random init), real exports, real ONNX Runtime sessions, real photos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from deepdetect_server.checkpoint import load_checkpoint
from deepdetect_server.config import ServerSettings
from deepdetect_server.core import Core
from deepdetect_server.errors import StartupError
from deepdetect_server.model import Detector
from deepdetect_server.preprocess import Preprocessor
from deepdetect_server.runtimes.base import Runtime, probabilities, warm_batch
from deepdetect_server.runtimes.int8 import auc, drift
from deepdetect_server.runtimes.onnx_export import export_onnx
from deepdetect_server.runtimes.ort import OnnxRuntime
from deepdetect_server.runtimes.parity import compare
from deepdetect_server.runtimes.samples import load_sample_set, pack_samples, read_samples
from deepdetect_server.runtimes.select import Selection, build_runtime, effective_precision
from server_helpers import jpeg, make_checkpoint


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A fresh checkpoint in its own folder, so its runtime cache starts empty."""
    (tmp_path / "model").mkdir()
    return make_checkpoint(tmp_path / "model" / "model.safetensors")


def select(checkpoint: Path, **settings: object) -> Selection:
    s = ServerSettings(checkpoint=checkpoint, device="cpu", **settings)  # type: ignore[arg-type]
    loaded = load_checkpoint(checkpoint)
    return build_runtime(s, loaded, Preprocessor(loaded.card, 10**8))


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos in ImageFolder layout: crops of skimage's photos under real/ and fake/."""
    from skimage import data

    root = tmp_path_factory.mktemp("samples")
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    for i in range(16):
        arr = photos[i % 4]
        h, w = arr.shape[:2]
        crop = arr[(i * 11) % (h // 3):, (i * 17) % (w // 3):]
        label = "fake" if i % 2 else "real"
        (root / label).mkdir(exist_ok=True)
        (root / label / f"img{i:02d}.jpg").write_bytes(jpeg(crop, quality=80 + i))
    return root


# --- selection -----------------------------------------------------------------------------------------


def test_runtime_torch_serves_the_detector(ckpt: Path) -> None:
    sel = select(ckpt, runtime="torch")
    assert isinstance(sel.runtime, Detector) and sel.runtime.name == "torch"
    assert isinstance(sel.runtime, Runtime)
    assert not (ckpt.parent / "runtime-cache").exists() or not any((ckpt.parent / "runtime-cache").iterdir())


def test_runtime_onnxruntime_matches_torch_and_reports_its_graph(ckpt: Path) -> None:
    sel = select(ckpt, runtime="onnxruntime")
    assert isinstance(sel.runtime, OnnxRuntime)
    entry = sel.report["candidates"]["onnxruntime"]
    assert entry["graph"] == "export" and "max |Δscore|" in entry["parity"]
    loaded = load_checkpoint(ckpt)
    batch = warm_batch(loaded.card, 3, seed=5)
    torch_scores = Detector(loaded.card, loaded.tensors, device="cpu").predict(batch)
    assert np.allclose(sel.runtime.predict(batch), torch_scores, atol=1e-6)


def test_auto_measures_every_candidate_and_picks_the_fastest(ckpt: Path) -> None:
    sel = select(ckpt, runtime="auto")
    cands = sel.report["candidates"]
    assert set(cands) == {"torch", "onnxruntime"}
    best = max(cands, key=lambda n: cands[n]["predicted_img_s"])
    assert sel.runtime.name == best
    assert sel.report["plan"]["threads"] == sel.runtime.threads >= 1
    assert sel.decode_workers == sel.report["plan"]["decode_workers"] >= 1


def test_fixed_threads_and_workers_are_kept(ckpt: Path) -> None:
    sel = select(ckpt, runtime="onnxruntime", cpu_threads=1, decode_workers=3)
    assert sel.runtime.threads == 1 and sel.decode_workers == 3
    assert list(sel.report["candidates"]["onnxruntime"]["forward_ms_per_image"]) == [1]


@pytest.mark.parametrize(("requested", "device", "expected"), [
    ("fp16", "cpu", "fp32"), ("bf16", "cpu", "fp32"), ("int8", "cpu", "int8"), ("int8", "cuda", "fp16"),
    ("fp16", "cuda", "fp16"), ("fp32", "cuda", "fp32"),
])
def test_effective_precision(requested: str, device: str, expected: str) -> None:
    assert effective_precision(requested, device) == expected


def test_int8_needs_onnxruntime_and_a_sample_set(ckpt: Path) -> None:
    with pytest.raises(StartupError, match="int8 runs on onnxruntime"):
        select(ckpt, runtime="torch", precision="int8")
    with pytest.raises(StartupError, match="needs a sample set"):
        select(ckpt, runtime="auto", precision="int8")


# --- parity ----------------------------------------------------------------------------------------------


def test_parity_refuses_a_graph_of_another_checkpoint_supplied_next_to_it(ckpt: Path, tmp_path: Path) -> None:
    other = load_checkpoint(make_checkpoint(tmp_path / "other.safetensors"))
    det = Detector(other.card, other.tensors, device="cpu")
    ckpt.with_suffix(".onnx").write_bytes(export_onnx(det.model, other.card))  # the broken export
    with pytest.raises(StartupError, match="parity check failed") as err:
        select(ckpt, runtime="auto")  # a supplied graph is refused even under auto
    assert "supplied graph" in str(err.value) and str(ckpt.with_suffix(".onnx")) in str(err.value)


def test_parity_refusal_keeps_the_server_from_becoming_ready(ckpt: Path, tmp_path: Path) -> None:
    other = load_checkpoint(make_checkpoint(tmp_path / "other.safetensors"))
    graph = tmp_path / "broken.onnx"
    graph.write_bytes(export_onnx(Detector(other.card, other.tensors, device="cpu").model, other.card))
    core = Core(ServerSettings(checkpoint=ckpt, device="cpu", runtime="onnxruntime", onnx_graph=graph))

    import asyncio

    with pytest.raises(StartupError, match="refusing to become ready"):
        asyncio.run(core.start())
    assert not core.ready


def test_parity_compare_rules() -> None:
    from deepdetect_server.checkpoint import card_for_architecture

    card = card_for_architecture("test_efficientnet", 32)
    ref = np.array([[1e-4, -2e-4], [3e-4, 1e-4]])
    same = compare("x", ref, ref + 1e-12, probabilities(ref, card), probabilities(ref + 1e-12, card))
    assert same.ok
    # Tiny logits (a random-init head): probabilities barely move, the relative logit check still fails.
    wrong = compare("x", ref, -ref, probabilities(ref, card), probabilities(-ref, card))
    assert wrong.max_prob_diff < 1e-3 and not wrong.ok
    nan = compare("x", ref, ref * np.nan, probabilities(ref, card), probabilities(ref, card))
    assert not nan.ok
    half = compare("x", ref, ref * 1.01, probabilities(ref, card), probabilities(ref * 1.01, card), "fp16")
    assert half.ok and not compare("x", ref, ref * 1.01, probabilities(ref, card),
                                   probabilities(ref * 1.01, card), "fp32").ok


# --- cache ------------------------------------------------------------------------------------------------


def test_cache_hits_by_digest_and_a_changed_checkpoint_never_reuses_a_stale_graph(ckpt: Path) -> None:
    first = select(ckpt, runtime="onnxruntime")
    path = Path(first.report["candidates"]["onnxruntime"]["graph_path"])
    assert path.parent == ckpt.parent / "runtime-cache" and load_checkpoint(ckpt).digest[7:] in path.name
    again = select(ckpt, runtime="onnxruntime")
    assert again.report["candidates"]["onnxruntime"]["graph"] == "cache"
    # New weights at the same path: another digest, another key, a fresh export that matches them.
    make_checkpoint(ckpt)
    changed = select(ckpt, runtime="onnxruntime")
    entry = changed.report["candidates"]["onnxruntime"]
    assert entry["graph"] == "export" and Path(entry["graph_path"]) != path
    assert "limit" in entry["parity"]


def test_a_damaged_cache_entry_is_rebuilt(ckpt: Path) -> None:
    path = Path(select(ckpt, runtime="onnxruntime").report["candidates"]["onnxruntime"]["graph_path"])
    path.write_bytes(path.read_bytes()[:1000])  # truncated: the sidecar's sha256 no longer matches
    assert select(ckpt, runtime="onnxruntime").report["candidates"]["onnxruntime"]["graph"] == "export"


def test_a_cached_graph_that_fails_parity_is_dropped_and_re_exported(ckpt: Path, tmp_path: Path) -> None:
    import hashlib

    path = Path(select(ckpt, runtime="onnxruntime").report["candidates"]["onnxruntime"]["graph_path"])
    other = load_checkpoint(make_checkpoint(tmp_path / "other.safetensors"))
    wrong = export_onnx(Detector(other.card, other.tensors, device="cpu").model, other.card)
    path.write_bytes(wrong)  # a consistent entry (sidecar updated) holding another model's graph
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["graph_sha256"] = hashlib.sha256(wrong).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(meta))
    sel = select(ckpt, runtime="onnxruntime")
    assert sel.report["candidates"]["onnxruntime"]["graph"] == "export"
    assert path.read_bytes() != wrong


def test_an_unwritable_cache_still_serves(ckpt: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    sel = select(ckpt, runtime="onnxruntime", runtime_cache_dir=blocked / "cache")
    entry = sel.report["candidates"]["onnxruntime"]
    assert entry["graph"] == "export" and entry["graph_path"] is None


# --- samples and int8 ---------------------------------------------------------------------------------------


def test_samples_from_a_folder_and_a_packed_file_agree(sample_dir: Path, tmp_path: Path, ckpt: Path) -> None:
    card = load_checkpoint(ckpt).card
    packed = tmp_path / "samples.safetensors"
    assert pack_samples(sample_dir, packed, card.labels) == 16
    assert read_samples(sample_dir, card) == read_samples(packed, card)
    pre = Preprocessor(card, 10**8)
    a, b = load_sample_set(sample_dir, card, pre), load_sample_set(packed, card, pre)
    assert a.digest == b.digest and np.array_equal(a.holdout, b.holdout)
    assert len(a.calibration) == len(a.holdout) == 8
    assert a.holdout_labels is not None and sorted(set(a.holdout_labels)) == [0, 1]


def test_too_small_or_broken_sample_sets_are_refused(sample_dir: Path, tmp_path: Path, ckpt: Path) -> None:
    card = load_checkpoint(ckpt).card
    pre = Preprocessor(card, 10**8)
    small = tmp_path / "small"
    (small / "real").mkdir(parents=True)
    shutil.copy(next((sample_dir / "real").iterdir()), small / "real")
    with pytest.raises(StartupError, match="at least 4"):
        load_sample_set(small, card, pre)
    for i in range(4):
        (small / "real" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff" + b"junk" * 10)
    with pytest.raises(StartupError, match="sample real/bad"):
        load_sample_set(small, card, pre)
    with pytest.raises(StartupError, match="does not exist"):
        load_sample_set(tmp_path / "missing", card, pre)


def test_int8_passes_its_gate_and_reports_the_measured_drift(ckpt: Path, sample_dir: Path) -> None:
    sel = select(ckpt, precision="int8", samples=sample_dir)
    assert sel.runtime.name == "onnxruntime-int8" and sel.runtime.precision == "int8"
    entry = sel.report["candidates"]["onnxruntime-int8"]
    assert entry["graph"] == "export" and entry["drift"]["images"] == 8
    assert 0 <= entry["drift"]["max_score_drift"] <= 0.05
    assert entry["drift"]["auc_fp32"] is not None  # the held-out half is labelled
    again = select(ckpt, precision="int8", samples=sample_dir)
    assert again.report["candidates"]["onnxruntime-int8"]["graph"] == "cache"


def test_int8_is_refused_when_its_drift_passes_the_gate(ckpt: Path, sample_dir: Path) -> None:
    with pytest.raises(StartupError, match=r"int8 refused: .* max \|Δscore\| [0-9.e+-]+ \(limit 1e-09\)"):
        select(ckpt, precision="int8", samples=sample_dir, int8_max_score_drift=1e-9)


def test_drift_gate_rules() -> None:
    fp32 = np.array([0.1, 0.2, 0.8, 0.9])
    assert drift(fp32, fp32 + 0.01, [0, 0, 1, 1], 0.05, 0.01).ok
    assert not drift(fp32, fp32 + 0.1, None, 0.05, 0.01).ok  # score drift
    flipped = drift(fp32, np.array([0.1, 0.85, 0.8, 0.9]), [0, 0, 1, 1], 1.0, 0.01)
    assert flipped.auc_drop == pytest.approx(0.25) and not flipped.ok  # ranking broken: AUC 1.0 -> 0.75
    assert drift(fp32, fp32, None, 0.05, 0.01).auc_drop is None


def test_auc() -> None:
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc(np.array([0.5, 0.5]), [0, 1]) == pytest.approx(0.5)
    assert np.isnan(auc(np.array([0.5, 0.6]), [1, 1]))


def test_samples_pack_cli(sample_dir: Path, tmp_path: Path, ckpt: Path) -> None:
    from deepdetect_server.cli import main

    out = tmp_path / "packed.safetensors"
    assert main(["samples", "pack", str(sample_dir), "--out", str(out)]) == 0
    assert len(read_samples(out, load_checkpoint(ckpt).card)) == 16
    assert main(["samples", "pack", str(tmp_path / "nothing"), "--out", str(out)]) == 1
    assert main(["samples", "pack", str(sample_dir), "--out", str(out), "--labels", "one"]) == 2
