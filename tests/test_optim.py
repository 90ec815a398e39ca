import copy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.models import AirNet
from cifar_pipeline.training.optim import SGD, Muon, build_optimizer, lr_factor, orthogonalize, set_lr


@pytest.mark.parametrize("shape", [(48, 216), (300, 40)])
def test_orthogonalize_flattens_the_singular_values(shape):
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=gen))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=gen))
    k = min(shape)
    g = u[:, :k] @ torch.diag(torch.linspace(8.0, 1.0, k)) @ v[:, :k].T  # singular values 8 .. 1
    out = orthogonalize(g)
    after = torch.linalg.svdvals(out)
    assert out.shape == g.shape
    assert after.max() <= 1.25 and after.min() >= 0.5  # from a spread of 8x to under 2.5x
    # Same directions: close to U V^T of the input.
    assert F.cosine_similarity(out.flatten(), (u[:, :k] @ v[:, :k].T).flatten(), dim=0) > 0.95


def test_muon_without_filter_groups_steps_exactly_like_torch_sgd():
    torch.manual_seed(0)
    a = nn.Linear(5, 3)
    b = nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    groups = lambda m: [{"params": [m.weight], "lr": 0.1, "base_lr": 0.1, "weight_decay": 0.01},  # noqa: E731
                        {"params": [m.bias], "lr": 0.5, "base_lr": 0.5, "weight_decay": 0.002}]
    ours = Muon(groups(a), momentum=0.85, nesterov=True)
    reference = torch.optim.SGD(groups(b), lr=0.1, momentum=0.85, nesterov=True)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    for _ in range(5):
        for model, opt in ((a, ours), (b, reference)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert torch.allclose(a.weight, b.weight, atol=1e-6) and torch.allclose(a.bias, b.bias, atol=1e-6)
    assert not torch.allclose(a.weight, nn.Linear(5, 3).weight)  # it moved


def test_our_sgd_steps_and_resumes_exactly_like_torch_sgd():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    groups = lambda m: [{"params": [m.weight], "lr": 0.1, "weight_decay": 0.01},  # noqa: E731
                        {"params": [m.bias], "lr": 0.5, "weight_decay": 0.002}]
    ours = SGD(groups(a), lr=0.1, momentum=0.85, nesterov=True, foreach=False)
    reference = torch.optim.SGD(groups(b), lr=0.1, momentum=0.85, nesterov=True, foreach=False)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))

    def steps(n: int) -> None:
        for _ in range(n):
            for model, opt in ((a, ours), (b, reference)):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()

    steps(3)
    assert ours.state_dict()["state"].keys() == reference.state_dict()["state"].keys() == {0, 1}
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    # A resumed optimizer (its state copied, as a checkpoint's is) goes on exactly where it stopped.
    ours = SGD(groups(a), lr=0.1, momentum=0.85, nesterov=True, foreach=False)
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))
    steps(3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.is_grad_enabled()  # the step's no_grad ended with it


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_building_stepping_and_checkpointing_an_optimizer_never_imports_dynamo(preset):
    # torch._dynamo's import (1.3-2.2 s on 2-core AMD EPYCs) used to come with the first optimizer, just before
    # the first step; a fresh process shows whether anything brings it back.
    code = textwrap.dedent(f"""
        import sys
        import torch
        from cifar_pipeline.config import PipelineConfig
        from cifar_pipeline.models import AirNet
        from cifar_pipeline.training.step import new_step
        cfg = PipelineConfig(preset="{preset}", width=8).resolved({{}})
        model = AirNet(width=8)
        step = new_step(cfg, model, torch.device("cpu"))
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        for _ in range(2):
            step(x, y)[0].item()
        step.optimizer.load_state_dict(step.optimizer.state_dict())
        step(x, y)
        print(type(step.optimizer).__name__, "torch._dynamo" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    name, imported = done.stdout.split()
    assert name == {"smoke": "SGD", "cpu": "Muon"}[preset]
    assert imported == "False", "something imported torch._dynamo while building or stepping the optimizer"


def _muon_cfg(**changes) -> PipelineConfig:
    return PipelineConfig(preset="cpu", optimizer="muon", width=8, **changes).resolved({})


def test_muon_gets_the_conv_filters_and_sgd_the_rest():
    model = AirNet(width=8)
    opt = build_optimizer(model, _muon_cfg())
    muon = [g for g in opt.param_groups if g["muon"]]
    sgd = [g for g in opt.param_groups if not g["muon"]]
    # Every 3x3 conv of the conv groups; the frozen whitening conv stays out.
    convs = [m.weight for m in model.layers.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6
    assert len(muon) == 1 and {id(p) for p in muon[0]["params"]} == {id(p) for p in convs}
    assert all(p is not model.whiten.weight for p in muon[0]["params"])
    rest = {id(p) for g in sgd for p in g["params"]}
    assert id(model.head.weight) in rest and all(id(b) in rest for b in model.norm_biases())
    set_lr(opt, 0.5)
    assert muon[0]["lr"] == pytest.approx(0.5 * _muon_cfg().muon_lr)


def test_a_muon_step_renormalises_filters_and_lowers_the_loss():
    torch.manual_seed(0)
    model = AirNet(width=8)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    model.init_from_data(x)
    opt = build_optimizer(model, _muon_cfg(muon_lr=0.01, lr=1e-4))
    model.train()

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    first = loss()
    opt.zero_grad()
    first.backward()
    opt.step()
    conv = model.layers[1].conv2.weight
    assert conv.norm().item() == pytest.approx(len(conv) ** 0.5, rel=0.05)
    assert loss().item() < first.item()


def test_lr_factor_with_peak_at_zero_decays_linearly_from_the_start():
    cfg = _muon_cfg(schedule="triangle", lr_start=1.0, lr_peak_at=0.0, lr_end=0.0)
    factors = [lr_factor(s, 100, cfg) for s in range(100)]
    assert factors[0] == 1.0 and factors[50] == pytest.approx(0.5) and factors[99] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(factors, factors[1:]))
