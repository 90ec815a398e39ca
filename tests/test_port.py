"""Pieces of the airbench94 port that differ from a plain reading of the code, and the new options."""

import torch

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.augment import jitter_colour
from cifar_pipeline.data.batches import TrainBatches
from cifar_pipeline.models import AirNet
from cifar_pipeline.training.loop import train


def test_whitening_conv_runs_in_fp32_under_cpu_bf16_autocast():
    torch.manual_seed(0)
    net = AirNet(width=8).eval()
    net.init_from_data(torch.randn(64, 3, 32, 32))
    seen = {}
    net.whiten.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype, out=o))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        net(x)
        reference = seen["out"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(x)
    assert seen["dtype"] == torch.float32
    torch.testing.assert_close(seen["out"], reference)


def test_lookahead_starts_at_the_configured_epoch(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    base = dict(preset="fast", epochs=2, batch_size=32, width=8, compile=False, precision="fp32")
    # fast: from the first step, as airbench94; epoch 5 of 2 never starts it, so the weights differ.
    from_start = train(PipelineConfig(**base).resolved({}), record, tmp_path / "a", progress=False)
    never = train(PipelineConfig(**base, ema_start_epoch=5).resolved({}), record, tmp_path / "b", progress=False)
    assert PipelineConfig(preset="fast").resolved({}).ema_start_epoch == 0
    assert PipelineConfig(preset="cpu").resolved({}).ema_start_epoch == 3
    a, b = torch.load(from_start.checkpoint, weights_only=True), torch.load(never.checkpoint, weights_only=True)
    assert a["lookahead"] is not None and b["lookahead"] is None


def test_colour_jitter_changes_brightness_and_contrast_per_image():
    x = torch.rand(2, 3, 4, 4) * 0.5 + 0.25
    same = jitter_colour(x.clone(), torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(same, x)
    out = jitter_colour(x.clone(), torch.tensor([0.1, 0.0]), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(out[0], (x[0] + 0.1).clamp(0, 1))
    assert out[1].std() < x[1].std() and torch.isclose(out[1].mean(), x[1].mean(), atol=1e-6)


def test_jitter_is_off_by_default_and_leaves_other_choices_unchanged():
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8).numpy()
    labels = torch.randint(0, 10, (64,)).numpy()
    kw = dict(batch_size=16, seed=3, normalize="standardize", flip="random", translate=2)
    plain, jittered = TrainBatches(images, labels, **kw), TrainBatches(images, labels, brightness=0.2, contrast=0.2, **kw)
    p, j = plain.plan(1), jittered.plan(1)
    assert p["offsets"] is None and j["offsets"] is not None
    assert all(torch.equal(p[k], j[k]) for k in ("order", "shifts", "flips"))
    (xp, yp), (xj, yj) = next(plain.epoch(1)), next(jittered.epoch(1))
    assert torch.equal(yp, yj) and xp.shape == xj.shape and not torch.allclose(xp, xj)
