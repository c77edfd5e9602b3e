"""MobileNetV2 (Sandler et al., 2018) without torchvision.

With default arguments (ImageNet, 1000 classes, width 1.0) the module's
state_dict keys and shapes are those of ``torchvision.models.mobilenet_v2``
(``features.0.0.weight`` ... ``features.18.1.*``, ``classifier.1.weight``), so
torchvision checkpoints load with ``strict=True``.  The block config, stem
stride and widths are arguments so small variants (Fashion-MNIST) reuse it.
"""
import torch.nn as nn

# t (expansion), c (output channels), n (repeats), s (first stride)
IMAGENET_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                    [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def conv_bn_relu6(cin, cout, k=3, stride=1, groups=1):
    """Conv (no bias) - BN - ReLU6, indexed .0/.1/.2 like Conv2dNormActivation."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """[1x1 expand-BN-ReLU6] - 3x3 depthwise-BN-ReLU6 - 1x1 project-BN (+ x)."""

    def __init__(self, cin, cout, stride, expand_ratio):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = [conv_bn_relu6(cin, hidden, k=1)] if expand_ratio != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """features (stem, inverted residuals, 1x1 conv) -> GAP -> Dropout -> Linear."""

    def __init__(self, num_classes=1000, setting=IMAGENET_SETTING, in_channels=3,
                 stem_channels=32, stem_stride=2, last_channels=1280, dropout=0.2):
        super().__init__()
        layers, cin = [conv_bn_relu6(in_channels, stem_channels, stride=stem_stride)], stem_channels
        for t, c, n, s in setting:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu6(cin, last_channels, k=1))
        self.features = nn.Sequential(*layers)
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))
