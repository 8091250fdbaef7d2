"""int8 on CPU: static quantization of the ONNX graph, calibrated on a sample set, behind a drift gate.

`quantize` turns the fp32 graph into a QDQ graph (per-channel int8 weights, uint8 activations, MinMax
ranges from the calibration images) with ONNX Runtime's own quantizer. The body is quantized end to end
(convolutions and the SiLU / squeeze-excite arithmetic between them, so ORT can keep tensors in int8
from one fused QLinearConv to the next instead of converting around every activation); the nodes of the
classifier head (Gemm/MatMul) stay fp32, so the scores keep their resolution (a quantized head would
round every probability to a multiple of 1/255).

`drift` scores the held-out images with both graphs: the largest |Δscore|, and when every held-out image
has a label, the AUC of each. Past either limit the server refuses int8 and says by how much.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StartupError
from .onnx_export import INPUT_NAME

# Left in fp32: the classifier head. Measured on EfficientNet-B0 (bench/int8.py, quiet 2-core EPYC with
# VNNI): quantizing only the convolutions was slower than fp32 (a Q/DQ pair around every SiLU); the whole
# body in QDQ is the fastest layout ORT offers here; QOperator and u8 weights were slower.
HEAD_OPS = ("Gemm", "MatMul")


def quantize(fp32_graph: bytes, calibration: np.ndarray, batch: int = 8) -> bytes:
    """QDQ int8 graph from the fp32 one; `calibration` is uint8 NHWC, the pixels the server will see."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise StartupError("precision int8 needs onnxruntime (and onnx) installed") from exc

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([calibration[i : i + batch] for i in range(0, len(calibration), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self._batches, None)
            return None if chunk is None else {INPUT_NAME: chunk}

    with tempfile.TemporaryDirectory(prefix="deepdetect-int8-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32_graph)
        quant_pre_process(str(src), str(pre))  # shape inference + folding: the quantizer needs both
        head = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in HEAD_OPS]
        quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=head)
        return out.read_bytes()


def auc(scores: np.ndarray, labels: list[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half): P(score of a positive > a negative)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


@dataclass(frozen=True)
class DriftReport:
    images: int
    max_score_drift: float
    mean_score_drift: float
    auc_fp32: float | None
    auc_int8: float | None
    max_score_drift_limit: float
    max_auc_drop_limit: float

    @property
    def auc_drop(self) -> float | None:
        if self.auc_fp32 is None or self.auc_int8 is None:
            return None
        return self.auc_fp32 - self.auc_int8

    @property
    def ok(self) -> bool:
        drop = self.auc_drop
        return self.max_score_drift <= self.max_score_drift_limit and (
            drop is None or drop <= self.max_auc_drop_limit)

    def describe(self) -> str:
        text = (f"on {self.images} held-out images max |Δscore| {self.max_score_drift:.3g} "
                f"(limit {self.max_score_drift_limit:g}), mean {self.mean_score_drift:.3g}")
        if self.auc_drop is not None:
            text += (f", AUC {self.auc_fp32:.4f} -> {self.auc_int8:.4f} (drop {self.auc_drop:+.4f}, "
                     f"limit {self.max_auc_drop_limit:g})")
        else:
            text += ", AUC not measured (the held-out set is not labelled with both labels)"
        return text

    def as_dict(self) -> dict[str, float | int | None]:
        return {"images": self.images, "max_score_drift": round(self.max_score_drift, 6),
                "mean_score_drift": round(self.mean_score_drift, 6), "auc_fp32": self.auc_fp32,
                "auc_int8": self.auc_int8}


def drift(fp32_scores: np.ndarray, int8_scores: np.ndarray, labels: list[int] | None,
          max_score_drift: float, max_auc_drop: float) -> DriftReport:
    delta = np.abs(np.asarray(fp32_scores, dtype=np.float64) - np.asarray(int8_scores, dtype=np.float64))
    return DriftReport(
        images=len(delta),
        max_score_drift=float(delta.max()),
        mean_score_drift=float(delta.mean()),
        auc_fp32=auc(fp32_scores, labels) if labels else None,
        auc_int8=auc(int8_scores, labels) if labels else None,
        max_score_drift_limit=max_score_drift,
        max_auc_drop_limit=max_auc_drop,
    )


def require_gate(report: DriftReport) -> None:
    if not report.ok:
        raise StartupError(
            f"int8 refused: quantized scores drift past the gate, {report.describe()}. Serve fp32 "
            "(precision: fp32), calibrate on a more representative sample set, or raise the gate "
            "(int8_max_score_drift, int8_max_auc_drop) if that drift is acceptable."
        )
