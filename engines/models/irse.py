"""IR-SE ResNet body (InsightFace/TreB1eN layout), shared by the e4e encoder and ArcFace.

Unit (bottleneck_IR_SE): residual = BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN -> SE;
shortcut = MaxPool2d(1, stride) (pure subsampling) when widths match, else conv1x1(stride) + BN;
output = residual + shortcut, no activation after the sum. SE: global average -> 1x1 conv (C -> C/16,
no bias) -> ReLU -> 1x1 conv (no bias) -> sigmoid -> channel scale. BatchNorm eps 1e-5 (eval).
State-dict names: input_layer.{0,1,2}.*, body.N.res_layer.{0..5}.*, body.N.shortcut_layer.{0,1}.*.
"""
from __future__ import annotations

from torch import nn

# units per stage for 50/100/152 layers; stage widths 64, 128, 256, 512, first unit of each stage stride 2
STAGES = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
WIDTHS = (64, 128, 256, 512)


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIRSE(nn.Module):
    def __init__(self, in_ch: int, depth: int, stride: int):
        super().__init__()
        if in_ch == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_ch, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), SEModule(depth, 16))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def unit_specs(num_layers: int = 50) -> list[tuple[int, int, int]]:
    """(in, depth, stride) for every unit of the body."""
    if num_layers not in STAGES:
        raise ValueError(f"IR-SE depth must be one of {sorted(STAGES)}, got {num_layers}")
    specs, in_ch = [], 64
    for n, depth in zip(STAGES[num_layers], WIDTHS):
        specs.append((in_ch, depth, 2))
        specs += [(depth, depth, 1)] * (n - 1)
        in_ch = depth
    return specs


class IRSEBackbone(nn.Module):
    """input_layer (conv3x3 3->64, BN, PReLU) + body; subclasses add their heads."""

    def __init__(self, num_layers: int = 50):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.body = nn.Sequential(*[BottleneckIRSE(i, d, s) for i, d, s in unit_specs(num_layers)])

    def train(self, mode: bool = True):
        # Inference-only port: BatchNorm must use its running statistics.
        return super().train(False)
