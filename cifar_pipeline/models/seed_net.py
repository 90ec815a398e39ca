"""The blog's `Net`, unchanged: four 5x5 convs (3-10-20-20-10), one max-pool, four linear layers."""

import torch
import torch.nn.functional as F
from torch import nn


class SeedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=10, kernel_size=(5, 5))
        self.conv2 = nn.Conv2d(in_channels=10, out_channels=20, kernel_size=(5, 5))
        self.conv3 = nn.Conv2d(20, 20, 5)
        self.conv4 = nn.Conv2d(20, 10, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(10 * 8 * 8, 800)
        self.fc2 = nn.Linear(800, 400)
        self.fc3 = nn.Linear(400, 100)
        self.fc4 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # 3x32x32
        x = F.relu(self.conv1(x))  # 10x28x28
        x = F.relu(self.conv2(x))  # 20x24x24
        x = F.relu(self.conv3(x))  # 20x20x20
        x = self.pool(F.relu(self.conv4(x)))  # 10x8x8
        # flatten() rather than the blog's view(): same values, and it accepts channels-last input.
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.fc4(x)
