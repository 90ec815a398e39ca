"""An airbench94-style network (Jordan, arXiv 2404.00498), written for this project.

A frozen 2x2 whitening conv initialised from the data's patch covariance, then three groups of
(conv, pool, BatchNorm, GELU, conv, BatchNorm, GELU), a 3x3 max-pool and a scaled linear head.
Convs start as identity (dirac) on their first channels, which acts like a residual connection.
"""

from __future__ import annotations

import torch
from torch import nn


class _BatchNorm(nn.BatchNorm2d):
    # airbench: no learned scale, only the bias; running stats follow the batch quickly.
    def __init__(self, channels: int, momentum: float = 0.6) -> None:
        super().__init__(channels, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class _Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[: self.weight.size(1)])


class _ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _Conv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BatchNorm(cout)
        self.conv2 = _Conv(cout, cout)
        self.norm2 = _BatchNorm(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    WHITEN_KERNEL = 2

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        k = self.WHITEN_KERNEL
        whiten_width = 2 * 3 * k * k
        widths = (width, 4 * width, 4 * width)
        self.whiten = nn.Conv2d(3, whiten_width, kernel_size=k, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.act = nn.GELU()
        self.layers = nn.Sequential(
            _ConvGroup(whiten_width, widths[0]),
            _ConvGroup(widths[0], widths[1]),
            _ConvGroup(widths[1], widths[2]),
        )
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(widths[2], 10, bias=False)
        self.scale = 1 / 9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # fp32 even under bf16 autocast: oneDNN's bf16 2x2 convolution has given wrong results
            # (pytorch issue 163347), and this layer is a negligible share of the FLOPs.
            with torch.autocast("cpu", enabled=False):
                x = self.act(self.whiten(x.float()))
        else:
            x = self.act(self.whiten(x))
        x = self.layers(x)
        return self.head(torch.flatten(self.pool(x), 1)) * self.scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters to the eigenvectors of the 2x2 patch covariance of `images`."""
        k = self.WHITEN_KERNEL
        c = images.shape[1]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = (eigenvectors / torch.sqrt(eigenvalues + eps)[:, None]).reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def norm_biases(self) -> list[nn.Parameter]:
        return [m.bias for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
