"""`zsc export onnx MODEL_DIR [--quantize PRESET]`: a local model's ONNX files, laid out as the
Hugging Face hub lays them out, so `backend: onnx` (and sentence-transformers' `CrossEncoder(...,
backend="onnx")`) load them.

- `onnx/model.onnx`: the fp32 graph, exported with torch's TorchScript exporter (what optimum
  uses; it needs no onnxscript), opset 18, inputs `input_ids`, `attention_mask` (and
  `token_type_ids` for BERT-style models) with dynamic batch and sequence axes, output `logits`.
- `onnx/model_<weights>_<preset>.onnx`: dynamic int8 quantisation with the settings of optimum's
  `AutoQuantizationConfig.<preset>(is_static=False)`, named as sentence-transformers names them
  (`model_qint8_avx512_vnni.onnx`, `model_qint8_arm64.onnx`, `model_quint8_avx2.onnx`, ...).

Needs torch (to export) and the `onnx` extra (onnx, onnxruntime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
OPSET = 18
PRESETS = ("avx512_vnni", "avx512", "avx2", "arm64")
# optimum's presets differ only in the weights' type: avx2 has no int8 x int8 dot product.
_UNSIGNED_WEIGHTS = {"avx2"}


def export_onnx(model_dir: str | Path) -> Path:
    """Write MODEL_DIR/onnx/model.onnx from the model's safetensors; returns its path."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    out = model_dir / ONNX_DIR / FP32_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    names = [
        n
        for n in ("input_ids", "attention_mask", "token_type_ids")
        if n in tokenizer.model_input_names
    ]

    class Logits(torch.nn.Module):
        """The model with a fixed positional signature and a plain tensor out."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            logits: torch.Tensor = self.inner(**dict(zip(names, inputs))).logits
            return logits

    # Rows of different lengths, so the traced graph handles padding like a served batch.
    example = tokenizer(
        ["a short premise", "a longer premise about sports, politics and the weather today"],
        ["This example is sports.", "This example is politics."],
        padding=True,
        return_tensors="pt",
    )
    dynamic_axes: dict[str, dict[int, str]] = {
        n: {0: "batch_size", 1: "sequence_length"} for n in names
    }
    dynamic_axes["logits"] = {0: "batch_size"}
    with torch.no_grad():
        torch.onnx.export(
            Logits(model.eval()),
            tuple(example[n] for n in names),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=["logits"],
            do_constant_folding=True,
            dynamic_axes=dynamic_axes,
        )
    return out


def quantized_file(preset: str) -> str:
    weights = "quint8" if preset in _UNSIGNED_WEIGHTS else "qint8"
    return f"model_{weights}_{preset}.onnx"


def quantize_settings(preset: str) -> dict[str, Any]:
    """`quantize_dynamic` arguments equal to optimum's dynamic preset as its ORTQuantizer
    applies it (checked to give the same graph)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    return {
        "per_channel": True,
        "reduce_range": False,
        "weight_type": QuantType.QUInt8 if preset in _UNSIGNED_WEIGHTS else QuantType.QInt8,
        "op_types_to_quantize": list(IntegerOpsRegistry),
        "extra_options": {
            "WeightSymmetric": True,
            "ActivationSymmetric": False,
            "EnableSubgraph": False,
            "ForceSymmetric": False,
            "AddQDQPairToWeight": False,
            "DedicatedQDQPair": False,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
            # optimum quantises the attention's activation x activation MatMuls too.
            "MatMulConstBOnly": False,
        },
    }


def quantize_onnx(model_dir: str | Path, preset: str) -> Path:
    """Write MODEL_DIR/onnx/model_<weights>_<preset>.onnx from onnx/model.onnx (exported first
    when missing); returns its path."""
    from onnxruntime.quantization import quantize_dynamic

    settings = quantize_settings(preset)
    fp32 = Path(model_dir) / ONNX_DIR / FP32_FILE
    if not fp32.is_file():
        export_onnx(model_dir)
    out = fp32.with_name(quantized_file(preset))
    quantize_dynamic(str(fp32), str(out), **settings)
    return out
