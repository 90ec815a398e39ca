"""Classifying images with a trained model: a model file becomes a Predictor; a Predictor scores batches.

A Predictor takes (N, 32, 32, 3) uint8 RGB arrays, the same arrays training and evaluation read
from the CIFAR-10 archive and that `data.images.decode_image` makes from image files, and applies
the model's own preprocessing (scaling, normalisation) and test-time augmentation, exactly as
`evaluation.evaluate.evaluate_checkpoint` does, so a lossless image file gets the prediction the
evaluation gave the same test image.

Model files: a promoted model (registry/models/<run_id>/model.pt) carries its class names,
normalisation and TTA level; older model files and training checkpoints carry only the config,
from which the same values are derived. An ONNX file (model.onnx) carries them as metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import layout
from ..config import PipelineConfig
from ..data.augment import CIFAR_MEAN, CIFAR_STD
from ..errors import ConfigError
from ..files import file_digest
from ..models import build_model
from ..training.checkpoint import load_checkpoint
from ..training.runtime import autocast, autocast_dtype, resolve_device
from ..training.scoring import tta_logits

# The archive's label order (batches.meta); model files written before they carried their
# class names were all trained on it.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
INPUT_DESCRIPTION = "float32 RGB batch N x 3 x 32 x 32, values in [0, 1] (uint8 pixel / 255)"


@dataclass(frozen=True)
class ModelInfo:
    """What a model file is and how its inputs must be prepared."""

    path: str
    sha256: str
    model: str
    width: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    tta: int
    precision: str
    engine: str  # "torch" or "onnx"

    def header(self) -> dict:
        return {"model_file": self.path, "model_sha256": self.sha256, "model": self.model, "engine": self.engine,
                "classes": self.classes, "tta": self.tta}


def preprocessing(cfg: PipelineConfig) -> dict:
    """The preprocessing a model trained with `cfg` expects: stored in model files and exports."""
    mean, std = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if cfg.normalize == "unit" else (CIFAR_MEAN, CIFAR_STD)
    return {"input": INPUT_DESCRIPTION, "mean": list(mean), "std": list(std), "tta": cfg.tta}


class InferenceModel(nn.Module):
    """The network with its preprocessing and test-time augmentation inside.

    Input: float32 RGB (N, 3, 32, 32) in [0, 1]; output: logits (N, classes). This is what
    `export` writes, so an exported model needs nothing from this project to be used correctly.
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], tta: int) -> None:
        super().__init__()
        self.net = net
        self.tta = tta
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.net, (x - self.mean) / self.std, self.tta)


def load_model_file(path: str | os.PathLike) -> tuple[InferenceModel, ModelInfo]:
    """A model file (promoted model.pt or training checkpoint) -> eval-mode InferenceModel on the CPU."""
    path = Path(path)
    try:
        state = load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise ConfigError(f"{path} is not a readable model file ({' '.join(str(exc).split())[:200]})") from None
    if "model" not in state or "config" not in state:
        raise ConfigError(f"{path} has no model weights and config; is it a cifar-pipeline model file?")
    cfg = PipelineConfig.model_validate(state["config"])
    prep = state.get("preprocessing") or preprocessing(cfg)
    net = build_model(cfg.model, cfg.width)
    net.load_state_dict(state["model"])
    model = InferenceModel(net, prep["mean"], prep["std"], int(prep["tta"])).eval()
    info = ModelInfo(
        path=str(path.resolve()), sha256=file_digest(path), model=cfg.model, width=cfg.width,
        classes=list(state.get("classes") or CIFAR10_CLASSES), mean=list(prep["mean"]), std=list(prep["std"]),
        tta=int(prep["tta"]), precision=cfg.precision, engine="torch",
    )
    return model, info


class Predictor:
    """Scores uint8 image batches with a model file's network (PyTorch, on `device`)."""

    def __init__(self, model: InferenceModel, info: ModelInfo, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.info = info
        # The same autocast as evaluation, so predictions match the evaluated accuracy.
        self.amp_dtype = autocast_dtype(self.device, info.precision)

    def logits(self, images: np.ndarray) -> np.ndarray:
        # np.require copies only a read-only or strided batch (an image decoded by PIL is read-only),
        # which torch.from_numpy would otherwise warn about.
        x = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255)
        with torch.no_grad(), autocast(self.device, self.amp_dtype):
            return self.model(x).float().cpu().numpy()


class OnnxPredictor:
    """Scores uint8 image batches with an exported ONNX model in ONNX Runtime (CPU)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{path} is not a loadable ONNX model ({' '.join(str(exc).split())[:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        prep = json.loads(meta.get("preprocessing", "{}"))
        self.input_name = self.session.get_inputs()[0].name
        self.info = ModelInfo(
            path=str(path.resolve()), sha256=file_digest(path), model=meta.get("model", "unknown"),
            width=int(meta.get("width", 0)), classes=json.loads(meta.get("classes", json.dumps(CIFAR10_CLASSES))),
            mean=prep.get("mean", []), std=prep.get("std", []), tta=int(prep.get("tta", 0)), precision="fp32",
            engine="onnx",
        )

    def logits(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
        return self.session.run(None, {self.input_name: x})[0]


def load_predictor(path: str | os.PathLike, device: str = "auto") -> Predictor | OnnxPredictor:
    if Path(path).suffix == ".onnx":
        return OnnxPredictor(path)
    model, info = load_model_file(path)
    return Predictor(model, info, device)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def resolve_model(output_dir: str | os.PathLike, spec: str = "champion", engine: str = "torch") -> Path:
    """`champion`, a run id from the registry, or a file -> the model file to load (ConfigError if none)."""
    registry = layout.registry_dir(output_dir)
    if spec == "champion":
        champion = registry / "champion.json"
        if not champion.is_file():
            raise ConfigError(f"no champion yet in {registry}: run `cifar-pipeline run` first, or pass --model FILE")
        path = Path(json.loads(champion.read_text())["model_file"])
    elif Path(spec).is_file():
        path = Path(spec)
    elif (registry / "models" / spec / "model.pt").is_file():
        path = registry / "models" / spec / "model.pt"
    else:
        known = sorted(p.name for p in (registry / "models").glob("*") if p.is_dir())
        raise ConfigError(f"unknown model {spec!r}: neither a file nor a run id in {registry / 'models'} "
                          f"(known: {', '.join(known[-5:]) or 'none'})")
    if engine == "onnx" and path.suffix != ".onnx":
        path = path.with_name("model.onnx")
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist" + (" (ONNX export missing or failed; see "
                          "MODEL_CARD.md beside it)" if engine == "onnx" else ""))
    return path
