"""Exporting a model with its preprocessing inside: ONNX (dynamic batch) and torch.export programs.

Both take a float32 RGB batch N x 3 x 32 x 32 with values in [0, 1] and return logits; the
normalisation and the test-time augmentation of the model file are part of the graph. The ONNX
file also carries the class names and preprocessing as metadata (`custom_metadata_map`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError
from ..files import atomic_write, file_digest
from .predict import INPUT_DESCRIPTION, InferenceModel, ModelInfo, load_model_file

log = logging.getLogger(__name__)

ONNX_OPSET = 18  # runs on ONNX Runtime 1.14+; opset 20 would need a newer runtime for nothing we use
INPUT_NAME = "images"


def _example(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _dynamic_batch() -> dict:
    return {"x": {0: torch.export.Dim("batch", min=1, max=65536)}}


def export_onnx(model: InferenceModel, info: ModelInfo, path: str | os.PathLike) -> Path:
    """Write `model` as one ONNX file (dynamo exporter, dynamic batch), atomically."""
    import onnx

    model = model.cpu().eval()
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (_example(),), dynamo=True, dynamic_shapes=_dynamic_batch(),
                                        input_names=[INPUT_NAME], output_names=["logits"], opset_version=ONNX_OPSET,
                                        verbose=False)
            program.save(str(Path(tmp) / "model.onnx"))
            proto = onnx.load(str(Path(tmp) / "model.onnx"))
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways; the caller decides what to keep
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
    metadata = {
        "classes": json.dumps(info.classes), "model": info.model, "width": str(info.width),
        "source_sha256": info.sha256, "input": INPUT_DESCRIPTION,
        "preprocessing": json.dumps({"mean": info.mean, "std": info.std, "tta": info.tta}),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"cifar-pipeline {info.model}: input {INPUT_DESCRIPTION}; output logits over {info.classes}"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))


def export_program(model: InferenceModel, path: str | os.PathLike) -> Path:
    """Write a torch.export program (`torch.export.load` needs torch only, not this project)."""
    model = model.cpu().eval()
    try:
        program = torch.export.export(model, (_example(),), dynamic_shapes=_dynamic_batch())
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def eager_logits(model: InferenceModel, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """fp32 logits of uint8 (N, 32, 32, 3) images: the reference an export is checked against."""
    model = model.cpu().eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2).float() / 255
            out.append(model(x).numpy())
    return np.concatenate(out)


def onnx_logits(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def compare(reference: np.ndarray, other: np.ndarray) -> dict:
    """Top-1 agreement and the largest absolute logit difference between two (N, C) logit arrays."""
    return {"images": len(reference),
            "top1_agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
            "max_logit_difference": float(np.abs(reference - other).max())}


def verify_onnx(path: str | os.PathLike, model: InferenceModel, images: np.ndarray) -> dict:
    """Run the ONNX file in ONNX Runtime on `images` and compare with the eager model."""
    try:
        return compare(eager_logits(model, images), onnx_logits(path, images))
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"ONNX check in ONNX Runtime failed: {type(exc).__name__}: {exc}") from exc


def export_model_file(model_file: str | os.PathLike, output: str | os.PathLike, fmt: str,
                      images: np.ndarray | None = None) -> dict:
    """`cifar-pipeline export`: write `fmt` (onnx | torch-export) and check it against the eager model.

    Without `images`, the check uses 64 random images (the top-1 agreement then says little; the
    logit difference still does).
    """
    model, info = load_model_file(model_file)
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    if fmt == "onnx":
        export_onnx(model, info, output)
        check = verify_onnx(output, model, images)
    elif fmt == "torch-export":
        export_program(model, output)
        loaded = torch.export.load(str(output)).module()
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            check = compare(eager_logits(model, images), loaded(x).numpy())
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    log.info("exported %s to %s: %s", model_file, output, check)
    return {"format": fmt, "output": str(Path(output).resolve()), "sha256": file_digest(output),
            "source_model": info.path, "source_sha256": info.sha256, "input": INPUT_DESCRIPTION, "check": check}


def export_for_promotion(model_file: str | os.PathLike, onnx_path: str | os.PathLike,
                         images: np.ndarray) -> tuple[dict | None, str | None]:
    """Write and check the champion's model.onnx: (check, None), or (None, the reason) when it failed.

    Never raises for an export failure: the promoted weights stay the champion without an ONNX file
    (the model card says why), rather than a broken exporter blocking every promotion.
    """
    try:
        model, info = load_model_file(model_file)
        export_onnx(model, info, onnx_path)
        return {**verify_onnx(onnx_path, model, images), "opset": ONNX_OPSET}, None
    except ExportError as exc:
        Path(onnx_path).unlink(missing_ok=True)
        log.warning("promotion continues without model.onnx: %s", exc)
        return None, " ".join(str(exc).split())
