"""ResNet-50 feature extractor in the torchvision layout (as DECA's encoder uses it), no classifier.

conv7x7 s2 p3 -> BN -> ReLU -> maxpool 3 s2 p1 -> 4 stages of Bottleneck blocks ([3,4,6,3]; stride on
the 3x3 conv; downsample = conv1x1(stride) + BN on each stage's first block) -> AvgPool2d(7, stride 1)
-> flatten. The fixed 7x7 pooling means the input must be 224x224 (as in DECA).
"""
from __future__ import annotations

from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_ch, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if stride != 1 or in_ch != out else None)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + idt)


class ResNet50Features(nn.Module):
    def __init__(self, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            layers = [Bottleneck(in_ch, planes, stride)]
            in_ch = planes * Bottleneck.expansion
            layers += [Bottleneck(in_ch, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.out_dim = in_ch

    def forward(self, x, trace: dict | None = None):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        if trace is not None:
            trace["stem_maxpool_out"] = x
        x = self.layer1(x)
        if trace is not None:
            trace["layer1_out"] = x
        x = self.layer4(self.layer3(self.layer2(x)))
        return self.avgpool(x).flatten(1)
