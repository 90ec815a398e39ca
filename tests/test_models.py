import typing

import torch

from cifar_pipeline.config import ModelName
from cifar_pipeline.models import MODELS, AirNet, build_model, count_parameters


def test_seed_net_is_the_blog_net():
    net = build_model("seed_net")
    # conv 3-10-20-20-10 (5x5), fc 640-800-400-100-10, as in the blog.
    expected = sum([3 * 10 * 25 + 10, 10 * 20 * 25 + 20, 20 * 20 * 25 + 20, 20 * 10 * 25 + 10,
                    640 * 800 + 800, 800 * 400 + 400, 400 * 100 + 100, 100 * 10 + 10])
    assert count_parameters(net) == expected == 895_120
    assert [m.kernel_size for m in (net.conv1, net.conv2, net.conv3, net.conv4)] == [(5, 5)] * 4
    assert net(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_channels_last_input_gives_the_same_logits():
    net = build_model("seed_net").eval()
    x = torch.rand(4, 3, 32, 32)
    reference = net(x)
    fast = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_registry_matches_the_config_choices():
    assert set(MODELS) == set(typing.get_args(ModelName))


def test_airnet_whitening_decorrelates_patches():
    torch.manual_seed(0)
    net = AirNet(width=8)
    images = torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1)
    net.init_from_data(images)
    out = net.whiten(images)[:, :12]  # the first half holds the whitening filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(flat.T)
    # Unit variance along the whitened directions, no correlation between them.
    torch.testing.assert_close(cov, torch.eye(12), atol=0.05, rtol=0.05)
    assert not net.whiten.weight.requires_grad
    assert net(images[:2]).shape == (2, 10)
