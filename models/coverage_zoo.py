"""Coverage zoo: small-but-faithful re-implementations (no torchvision) of the architectures users
actually export, plus hand-built TensorFlow-style NHWC graphs, for analyzer/rewriter coverage.

Widths and depths are reduced (inputs 3x32x32 or 3x64x64, 4-64 channels) but every structural
feature of the original is kept: stems, downsample shortcuts, grouped / depthwise convs, SE gates,
hard-swish / SiLU / GELU, channel shuffle, dense concatenation with pre-activation BN, multi-branch
inception, conv classifiers, LayerNorm over channels on NHWC tensors, attention.

    coverage_models()                         -> [(name, factory)]   torch models only
    build_coverage_zoo(out_dir, exporters)    -> [CoverageModel]     exports what is missing
    random_input(cm, batch, seed)             -> {input_name: array}

Exports that fail are not fatal: the reason goes to ``<stem>.failed`` and ``EXPORT_FAILURES``.
Weights are random (kaiming for convs, BatchNorm / LayerNorm statistics and affine parameters
randomised) so that no normalisation is the identity and outputs depend on the input.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from models.exporters import export_cached

SEED = 0
EXPORTERS = ("ts11", "ts13", "ts17", "dynamo18")
EXPORT_BATCH = 2  # torch.export specialises dims of size 1
EXPORT_FAILURES: dict[tuple[str, str], str] = {}
EXPORT_TIMES: dict[tuple[str, str], float] = {}
HAND_BUILT = "onnx"  # "exporter" of the hand-built NHWC graphs


@dataclasses.dataclass
class CoverageModel:
    name: str
    exporter: str
    path: pathlib.Path
    input_name: str
    input_shape: tuple  # batch 1
    output_names: tuple = ("output",)


def _div(v: float, d: int = 4) -> int:
    """torchvision's _make_divisible (scaled down)."""
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def conv_bn(cin, cout, k=3, s=1, groups=1, act: Callable | None = nn.ReLU, p=None, bn_eps=1e-5):
    p = (k - 1) // 2 if p is None else p
    layers = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=bn_eps)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """AdaptiveAvgPool2d(1) -> flatten -> Dropout -> Linear (torchvision's common head)."""

    def __init__(self, cin, ncls=10, dropout=0.2):
        super().__init__()
        self.pool, self.drop, self.fc = nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout), nn.Linear(cin, ncls)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


# ----------------------------------------------------------------------------------- ResNet family
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, groups=1, width_per_group=None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck (stride on the 3x3, torchvision v1.5); ResNeXt with groups > 1."""
    expansion = 4

    def __init__(self, cin, planes, stride=1, groups=1, width_per_group=None):
        super().__init__()
        width = planes if width_per_group is None else (planes * width_per_group // 16) * groups
        cout = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class ResNet(nn.Module):
    def __init__(self, block, layers, widths=(8, 16, 32, 64), groups=1, width_per_group=None, ncls=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = widths[0], []
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, 2 if (j == 0 and i > 0) else 1, groups, width_per_group))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(cin, ncls)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------------- MobileNetV2
class InvertedResidualV2(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hid = cin * t
        self.use_res = stride == 1 and cin == cout
        layers = [conv_bn(cin, hid, 1, act=nn.ReLU6)] if t != 1 else []
        layers += [conv_bn(hid, hid, 3, stride, groups=hid, act=nn.ReLU6), conv_bn(hid, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    SETTING = [[1, 8, 1, 1], [6, 12, 2, 2], [6, 16, 2, 2], [6, 24, 2, 1], [6, 32, 1, 2]]

    def __init__(self, ncls=10):
        super().__init__()
        layers, cin = [conv_bn(3, 8, 3, 1, act=nn.ReLU6)], 8  # CIFAR-style stem stride 1
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(InvertedResidualV2(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 64, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, ncls))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------- MobileNetV3
class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: avgpool -> fc1 (conv) -> act -> fc2 (conv) -> gate -> scale."""

    def __init__(self, c, sq, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, sq, 1), nn.Conv2d(sq, c, 1)
        self.activation, self.scale_activation = act(), gate()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class InvertedResidualV3(nn.Module):
    def __init__(self, cin, k, exp, cout, se, act, stride):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, act=act))
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcitation(exp, _div(exp // 4, 4), nn.ReLU, nn.Hardsigmoid))
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3(nn.Module):
    """MobileNetV3-Small layout (k, exp, out, SE, act, stride), widths scaled down."""
    RE, HS = nn.ReLU, nn.Hardswish
    CFG = [(3, 8, 8, True, RE, 2), (3, 24, 12, False, RE, 2), (3, 32, 12, False, RE, 1),
           (5, 32, 16, True, HS, 2), (5, 48, 16, True, HS, 1), (5, 48, 24, True, HS, 1)]

    def __init__(self, ncls=10):
        super().__init__()
        layers, cin = [conv_bn(3, 8, 3, 2, act=nn.Hardswish)], 8
        for k, exp, out, se, act, s in self.CFG:
            layers.append(InvertedResidualV3(cin, k, exp, out, se, act, s))
            cin = out
        layers.append(conv_bn(cin, 6 * cin, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * cin, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, ncls))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ----------------------------------------------------------------------------------- EfficientNet
class MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, stride):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        hid = cin * expand
        layers = []
        if hid != cin:
            layers.append(conv_bn(cin, hid, 1, act=nn.SiLU))
        layers.append(conv_bn(hid, hid, k, stride, groups=hid, act=nn.SiLU))
        layers.append(SqueezeExcitation(hid, max(1, cin // 4), nn.SiLU, nn.Sigmoid))
        layers.append(conv_bn(hid, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)  # stochastic depth is the identity in eval mode
        return x + y if self.use_res else y


class EfficientNet(nn.Module):
    """B0 layout (expand, k, stride, out, repeats), widths scaled down."""
    CFG = [(1, 3, 1, 8, 1), (6, 3, 2, 12, 2), (6, 5, 2, 16, 2), (6, 3, 2, 24, 1), (6, 5, 1, 32, 2)]

    def __init__(self, ncls=10):
        super().__init__()
        layers, cin = [conv_bn(3, 8, 3, 2, act=nn.SiLU)], 8
        for e, k, s, c, n in self.CFG:
            for i in range(n):
                layers.append(MBConv(cin, c, e, k, s if i == 0 else 1))
                cin = c
        layers.append(conv_bn(cin, 4 * cin, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * cin, ncls))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ----------------------------------------------------------------------------------- MnasNet
class MnasNet(nn.Module):
    """torchvision mnasnet layout: sep-conv stem, inverted residual stacks, x.mean([2, 3]) head."""
    CFG = [(3, 12, 3, 2, 2), (5, 16, 3, 2, 2), (5, 24, 6, 2, 2), (3, 32, 6, 1, 1)]  # (k, out, t, s, n)

    def __init__(self, ncls=10):
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                  nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                  nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)]
        cin = 8
        for k, out, t, s, n in self.CFG:
            for i in range(n):
                layers.append(InvertedResidualK(cin, out, k, s if i == 0 else 1, t))
                cin = out
        layers += [nn.Conv2d(cin, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, ncls))

    def forward(self, x):
        return self.classifier(self.layers(x).mean([2, 3]))


class InvertedResidualK(nn.Module):
    def __init__(self, cin, cout, k, stride, t):
        super().__init__()
        mid = cin * t
        self.apply_residual = cin == cout and stride == 1
        self.layers = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, k, stride, groups=mid),
                                    conv_bn(mid, cout, 1, act=None))

    def forward(self, x):
        return self.layers(x) + x if self.apply_residual else self.layers(x)


# ----------------------------------------------------------------------------------- RegNetY
class RegNetBlock(nn.Module):
    """ResBottleneckBlock: 1x1 -> grouped 3x3 -> SE (squeeze of the block input width) -> 1x1 (+ proj)."""

    def __init__(self, w_in, w_out, stride, group_width=4, bottleneck=1.0, se_ratio=0.25):
        super().__init__()
        w_b = int(round(w_out * bottleneck))
        g = w_b // group_width
        self.proj = conv_bn(w_in, w_out, 1, stride, act=None) if (w_in != w_out or stride != 1) else None
        self.a = conv_bn(w_in, w_b, 1)
        self.b = conv_bn(w_b, w_b, 3, stride, groups=g)
        self.se = SqueezeExcitation(w_b, int(round(se_ratio * w_in)), nn.ReLU, nn.Sigmoid)
        self.c = conv_bn(w_b, w_out, 1, act=None)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        idt = x if self.proj is None else self.proj(x)
        return self.activation(idt + self.c(self.se(self.b(self.a(x)))))


class RegNet(nn.Module):
    def __init__(self, widths=(8, 16, 32, 48), depths=(1, 1, 2, 1), ncls=10):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        blocks, cin = [], 8
        for w, d in zip(widths, depths):
            for i in range(d):
                blocks.append(RegNetBlock(cin, w, 2 if i == 0 else 1))
                cin = w
        self.trunk_output = nn.Sequential(*blocks)
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(cin, ncls)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.trunk_output(self.stem(x))), 1))


# ----------------------------------------------------------------------------------- ShuffleNetV2
def channel_shuffle(x, groups: int):
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, half = stride, cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half, 1))
        bin_ = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(bin_, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None),
                                     conv_bn(half, half, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats=(2, 3, 2), channels=(8, 16, 32, 64, 128), ncls=10):
        super().__init__()
        self.conv1 = conv_bn(3, channels[0], 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = channels[0], []
        for n, c in zip(repeats, channels[1:]):
            seq = [ShuffleBlock(cin, c, 2)] + [ShuffleBlock(c, c, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*seq))
            cin = c
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = conv_bn(cin, channels[-1], 1)
        self.fc = nn.Linear(channels[-1], ncls)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


# ----------------------------------------------------------------------------------- DenseNet
class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, inputs: list):
        x = torch.cat(inputs, 1)  # BN right after a Concat: per-segment parameters, cannot be folded
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.Module):
    def __init__(self, n, cin, growth, bn_size):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(n))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class DenseNet(nn.Module):
    def __init__(self, growth=4, blocks=(3, 3, 3), init=8, bn_size=2, ncls=10):
        super().__init__()
        feats = [nn.Conv2d(3, init, 3, 1, 1, bias=False), nn.BatchNorm2d(init), nn.ReLU(inplace=True),
                 nn.MaxPool2d(3, 2, 1)]
        c = init
        for i, n in enumerate(blocks):
            feats.append(DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                feats += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False),
                          nn.AvgPool2d(2, 2)]
                c //= 2
        feats.append(nn.BatchNorm2d(c))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Linear(c, ncls)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))


# ----------------------------------------------------------------------------------- GoogLeNet
def basic_conv(cin, cout, k, s=1, p=None):
    """GoogLeNet/Inception BasicConv2d: conv (no bias) -> BN(eps=1e-3) -> ReLU; k may be (kh, kw)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    p = ((kh - 1) // 2, (kw - 1) // 2) if p is None else p
    return nn.Sequential(nn.Conv2d(cin, cout, (kh, kw), s, p, bias=False), nn.BatchNorm2d(cout, eps=1e-3),
                         nn.ReLU(inplace=True))


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp, factorised=False):
        super().__init__()
        self.branch1 = basic_conv(cin, c1, 1)
        self.branch2 = nn.Sequential(basic_conv(cin, c3r, 1), basic_conv(c3r, c3, 3))
        if factorised:  # Inception-v3 style 1x3 / 3x1 pair
            self.branch3 = nn.Sequential(basic_conv(cin, c5r, 1), basic_conv(c5r, c5, (1, 3)),
                                         basic_conv(c5, c5, (3, 1)))
        else:  # torchvision's "5x5" branch is a 3x3
            self.branch3 = nn.Sequential(basic_conv(cin, c5r, 1), basic_conv(c5r, c5, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), basic_conv(cin, pp, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, ncls=10):
        super().__init__()
        self.conv1 = basic_conv(3, 16, 3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(16, 8, 6, 8, 2, 4, 4)          # -> 24
        self.inception3b = Inception(24, 8, 8, 12, 4, 6, 6)         # -> 32
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(32, 12, 8, 12, 4, 8, 8, factorised=True)  # -> 40
        self.avgpool, self.dropout = nn.AdaptiveAvgPool2d((1, 1)), nn.Dropout(0.2)
        self.fc = nn.Linear(40, ncls)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


# ----------------------------------------------------------------------------------- SqueezeNet
class Fire(nn.Module):
    def __init__(self, cin, sq, e1, e3):
        super().__init__()
        self.squeeze, self.squeeze_activation = nn.Conv2d(cin, sq, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand1x1_activation = nn.Conv2d(sq, e1, 1), nn.ReLU(inplace=True)
        self.expand3x3, self.expand3x3_activation = nn.Conv2d(sq, e3, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1: Fire modules; the classifier is a 1x1 conv whose output reaches the graph output."""

    def __init__(self, ncls=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 4, 8, 8), Fire(16, 4, 8, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 8, 16, 16), Fire(32, 8, 16, 16), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(32, 12, 24, 24), Fire(48, 16, 32, 32))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(64, ncls, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


# ----------------------------------------------------------------------------------- ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    """torchvision's LayerNorm2d: permute to NHWC, LayerNorm over channels, permute back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale=0.5):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC: Linear layers are MatMuls over the last axis
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = (self.layer_scale * y).permute(0, 3, 1, 2)
        return x + y  # stochastic depth: identity in eval


class ConvNeXt(nn.Module):
    def __init__(self, dims=(16, 32, 48), depths=(1, 2, 1), ncls=10):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))]
        for i, (d, n) in enumerate(zip(dims, depths)):
            if i > 0:
                layers.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], d, 2, 2)))
            layers.append(nn.Sequential(*[CNBlock(d) for _ in range(n)]))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], ncls))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


# ----------------------------------------------------------------------------------- ViT
class Attention(nn.Module):
    """timm-style multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class EncoderBlock(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, dim), nn.Dropout(0.0))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """torchvision VisionTransformer layout: conv patch embedding, class token, position embedding,
    pre-norm encoder blocks, final LayerNorm, head on the class token."""

    def __init__(self, image=32, patch=4, dim=32, heads=4, mlp=64, depth=2, ncls=10):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2
        self.class_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(0.02 * torch.randn(1, n + 1, dim))
        self.layers = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, ncls)

    def forward(self, x):
        x = self.conv_proj(x)
        b, c = x.shape[0], x.shape[1]
        x = x.reshape(b, c, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(b, -1, -1), x], dim=1) + self.pos_embedding
        x = self.ln(self.layers(x))
        return self.head(x[:, 0])


# ----------------------------------------------------------------------------------- table
_C32, _C64 = (1, 3, 32, 32), (1, 3, 64, 64)
_SPECS: dict[str, tuple[Callable[[], nn.Module], tuple]] = {
    "resnet18": (lambda: ResNet(BasicBlock, (2, 2, 2, 2)), _C64),
    "resnet50": (lambda: ResNet(Bottleneck, (1, 2, 2, 1)), _C64),
    "resnext": (lambda: ResNet(Bottleneck, (1, 1, 1, 1), groups=4, width_per_group=8), _C64),
    "mobilenetv2": (MobileNetV2, _C32),
    "mobilenetv3": (MobileNetV3, _C32),
    "efficientnet_b0": (EfficientNet, _C32),
    "mnasnet": (MnasNet, _C32),
    "regnety": (RegNet, _C32),
    "shufflenetv2": (ShuffleNetV2, _C64),
    "densenet": (DenseNet, _C32),
    "googlenet": (GoogLeNet, _C32),
    "squeezenet": (SqueezeNet, _C64),
    "convnext": (ConvNeXt, _C32),
    "vit": (ViT, _C32),
}


def _randomize(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
            if m.bias is not None:
                m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(0.2 * torch.randn(n, generator=gen))
        if isinstance(m, nn.LayerNorm):
            m.weight.data.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.data.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
        if isinstance(m, CNBlock):
            m.layer_scale.data.copy_(0.3 + 0.5 * torch.rand(m.layer_scale.shape, generator=gen))
    return model


def make(name: str) -> nn.Module:
    builder = _SPECS[name][0]
    torch.manual_seed(SEED)
    model = builder()
    with torch.no_grad():
        _randomize(model, torch.Generator().manual_seed(SEED + 1))
    return model.eval()


def coverage_models() -> list[tuple[str, Callable[[], nn.Module]]]:
    return [(n, (lambda n=n: make(n))) for n in _SPECS]


def torch_names() -> list[str]:
    return list(_SPECS)


# ----------------------------------------------------------------------------------- NHWC graphs
def _nhwc_cnn(path: pathlib.Path) -> None:
    """tf2onnx-style NHWC CNN, opset 13: a Transpose pair around every Conv; bias, folded BN (Mul+Add)
    and Clip (ReLU6) applied on the last (channel) axis; residual Add in NHWC; ReduceMean over H, W;
    MatMul + Add classifier."""
    rng = np.random.default_rng(SEED)
    inits, nodes = [], []

    def w(name, *shape, scale=None, positive=False):
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        arr = rng.uniform(0.5, 1.5, shape) if positive else \
            rng.standard_normal(shape) * (scale if scale is not None else math.sqrt(2.0 / fan))
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def node(op, ins, outs, name, **kw):
        nodes.append(helper.make_node(op, ins, outs, name=name, **kw))
        return outs[0]

    def conv_nhwc(x, name, cin, cout, k, s=1, group=1):
        t = node("Transpose", [x], [f"{name}/nchw"], f"{name}/to_nchw", perm=[0, 3, 1, 2])
        pad = (k - 1) // 2
        c = node("Conv", [t, w(f"{name}/kernel", cout, cin // group, k, k), w(f"{name}/bias", cout, scale=0.1)],
                 [f"{name}/conv"], f"{name}/Conv2D", kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4, group=group)
        return node("Transpose", [c], [f"{name}/nhwc"], f"{name}/to_nhwc", perm=[0, 2, 3, 1])

    def bn_nhwc(x, name, c):
        m = node("Mul", [x, w(f"{name}/scale", c, positive=True)], [f"{name}/mul"], f"{name}/mul")
        return node("Add", [m, w(f"{name}/offset", c, scale=0.2)], [f"{name}/add"], f"{name}/add")

    def relu6(x, name):
        inits.extend([numpy_helper.from_array(np.array(0, np.float32), f"{name}/min"),
                      numpy_helper.from_array(np.array(6, np.float32), f"{name}/max")])
        return node("Clip", [x, f"{name}/min", f"{name}/max"], [f"{name}/relu6"], f"{name}/Relu6")

    x = conv_nhwc("input", "stem", 3, 16, 3, 2)
    x = relu6(bn_nhwc(x, "stem_bn", 16), "stem_act")
    x = relu6(bn_nhwc(conv_nhwc(x, "dw1", 16, 16, 3, 1, group=16), "dw1_bn", 16), "dw1_act")
    x = bn_nhwc(conv_nhwc(x, "pw1", 16, 24, 1), "pw1_bn", 24)
    y = relu6(bn_nhwc(conv_nhwc(x, "exp2", 24, 48, 1), "exp2_bn", 48), "exp2_act")
    y = relu6(bn_nhwc(conv_nhwc(y, "dw2", 48, 48, 3, 1, group=48), "dw2_bn", 48), "dw2_act")
    y = bn_nhwc(conv_nhwc(y, "pw2", 48, 24, 1), "pw2_bn", 24)
    x = node("Add", [x, y], ["res2"], "res2/add")
    x = node("Relu", [bn_nhwc(conv_nhwc(x, "head", 24, 64, 1), "head_bn", 64)], ["head/relu"], "head/Relu")
    x = node("ReduceMean", [x], ["gap"], "global_pool/Mean", axes=[1, 2], keepdims=0)
    x = node("MatMul", [x, w("logits/kernel", 64, 10, scale=0.2)], ["logits/mm"], "logits/MatMul")
    node("Add", [x, w("logits/bias", 10, scale=0.1)], ["output"], "logits/BiasAdd")
    graph = helper.make_graph(nodes, "tf_nhwc_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32, 32, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx-style")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _nhwc_flatten(path: pathlib.Path) -> None:
    """Keras-style NHWC CNN, opset 18: Transposes around Conv and MaxPool, Relu in NHWC, then
    Reshape to [-1, H*W*C] (channels interleaved, the fastest axis) -> MatMul -> Relu -> MatMul -> Softmax."""
    rng = np.random.default_rng(SEED + 7)
    inits, nodes = [], []

    def w(name, *shape, scale=None):
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        arr = rng.standard_normal(shape) * (scale if scale is not None else math.sqrt(2.0 / fan))
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def node(op, ins, outs, name, **kw):
        nodes.append(helper.make_node(op, ins, outs, name=name, **kw))
        return outs[0]

    def t(x, name, to_nchw):
        return node("Transpose", [x], [f"{name}/t"], name, perm=[0, 3, 1, 2] if to_nchw else [0, 2, 3, 1])

    x = t("input", "conv1/to_nchw", True)
    x = node("Conv", [x, w("conv1/kernel", 8, 3, 3, 3), w("conv1/bias", 8, scale=0.1)], ["conv1/y"], "conv1/Conv2D",
             kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = node("Relu", [t(x, "conv1/to_nhwc", False)], ["conv1/relu"], "conv1/Relu")
    x = node("MaxPool", [t(x, "pool1/to_nchw", True)], ["pool1/y"], "pool1/MaxPool", kernel_shape=[2, 2],
             strides=[2, 2])
    x = t(x, "pool1/to_nhwc", False)
    x = node("Conv", [t(x, "conv2/to_nchw", True), w("conv2/kernel", 12, 8, 3, 3), w("conv2/bias", 12, scale=0.1)],
             ["conv2/y"], "conv2/Conv2D", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    x = node("Relu", [t(x, "conv2/to_nhwc", False)], ["conv2/relu"], "conv2/Relu")  # [N, 4, 4, 12]
    inits.append(numpy_helper.from_array(np.array([-1, 4 * 4 * 12], np.int64), "flatten/shape"))
    x = node("Reshape", [x, "flatten/shape"], ["flatten/y"], "flatten/Reshape")
    x = node("MatMul", [x, w("dense1/kernel", 192, 32, scale=math.sqrt(2 / 192))], ["dense1/mm"], "dense1/MatMul")
    x = node("Add", [x, w("dense1/bias", 32, scale=0.1)], ["dense1/y"], "dense1/BiasAdd")
    x = node("Relu", [x], ["dense1/relu"], "dense1/Relu")
    x = node("MatMul", [x, w("dense2/kernel", 32, 10, scale=0.3)], ["dense2/mm"], "dense2/MatMul")
    x = node("Add", [x, w("dense2/bias", 10, scale=0.1)], ["dense2/y"], "dense2/BiasAdd")
    node("Softmax", [x], ["output"], "predictions/Softmax", axis=-1)
    graph = helper.make_graph(nodes, "keras_nhwc_flatten",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16, 16, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="keras2onnx-style")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


_HAND: dict[str, tuple[Callable[[pathlib.Path], None], tuple]] = {
    "tf_nhwc_cnn": (_nhwc_cnn, (1, 32, 32, 3)),
    "tf_nhwc_flatten": (_nhwc_flatten, (1, 16, 16, 3)),
}


def all_names() -> list[str]:
    return list(_SPECS) + list(_HAND)


# ----------------------------------------------------------------------------------- export
def build_coverage_zoo(out_dir, exporters=EXPORTERS, names=None) -> list[CoverageModel]:
    """Export every coverage model with every exporter into `out_dir` (cached: only missing files are
    built), plus the hand-built NHWC graphs (exporter 'onnx'). Failures are recorded, not raised."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for name in (names or all_names()):
        if name in _HAND:
            fn, shape = _HAND[name]
            path = out_dir / f"{name}_{HAND_BUILT}.onnx"
            if not path.exists():
                fn(path)
            result.append(CoverageModel(name, HAND_BUILT, path, "input", shape))
            continue
        shape = _SPECS[name][1]
        built: dict = {}
        for exp in exporters:
            path = out_dir / f"{name}_{exp}.onnx"
            x = torch.randn((EXPORT_BATCH, *shape[1:]), generator=torch.Generator().manual_seed(SEED))
            t0 = time.perf_counter()
            failure = export_cached(lambda name=name, built=built: built.setdefault(name, make(name)), exp, x, path)
            EXPORT_TIMES.setdefault((name, exp), time.perf_counter() - t0)
            if failure is not None:
                EXPORT_FAILURES[(name, exp)] = failure
                continue
            result.append(CoverageModel(name, exp, path, "input", shape))
    return result


def random_input(cm: CoverageModel, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Gaussian noise with a random per-sample scale and offset (white noise alone is averaged away)."""
    rng = np.random.default_rng(seed)
    shape, bshape = (batch, *cm.input_shape[1:]), (batch,) + (1,) * (len(cm.input_shape) - 1)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, bshape) + rng.standard_normal(bshape)
    return {cm.input_name: x.astype(np.float32)}


if __name__ == "__main__":
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else str(pathlib.Path(__file__).parent / "cache" / "coverage")
    t0 = time.perf_counter()
    zoo = build_coverage_zoo(out)
    print(f"{len(zoo)} models in {time.perf_counter() - t0:.1f}s; failures:")
    for k, v in sorted(EXPORT_FAILURES.items()):
        print(f"  {k}: {v[:200]}")
