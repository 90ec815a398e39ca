"""Training stopped after an epoch (as a killed run is) and run again: what resuming tests share."""

import pytest
import torch

from cifar_pipeline.training.checkpoint import load_checkpoint
from cifar_pipeline.training.loop import train


class Stop(Exception):
    pass


def stopped_and_resumed(cfg, record, folder, after_epoch: int = 2, **options):
    """Train `cfg` in `folder`, stopped once `after_epoch` epochs are checkpointed, then again to the end."""
    def stop(metrics, _total):
        if metrics.epoch == after_epoch:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, record, folder, on_epoch=stop, progress=False, **options)
    return train(cfg, record, folder, progress=False, **options)


def same_weights(a: str, b: str) -> list[str]:
    """The weights that differ between two checkpoints (none: the same model)."""
    left, right = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return [name for name in left if not torch.equal(left[name], right[name])]
