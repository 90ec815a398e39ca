"""Model registry: the config names a model, `build_model` makes it."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .airnet import AirNet
from .seed_net import SeedNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed_net": lambda width: SeedNet(),
    "airnet": lambda width: AirNet(width=width),
}


def build_model(name: str, width: int = 64) -> nn.Module:
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    return factory(width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "AirNet", "SeedNet", "build_model", "count_parameters"]
