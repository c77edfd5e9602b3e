"""Small ResNet for Fashion-MNIST (28x28x1) -> models/fmnist_resnet.onnx.

Normalize, stem conv3x3-BN-ReLU (32 @28x28), BasicBlocks 32->64/s2 (14x14),
64->64 (identity shortcut), 64->128/s2 (7x7) -- stride-2 blocks use a 1x1
conv+BN shortcut -- then GAP, flatten, Linear(128, 10).  ~364k parameters.

    python models/fmnist_resnet.py [--epochs N] [--out-dir models]
"""
import torch.nn as nn

try:
    from . import train_common as tc
except ImportError:  # run as a script from models/
    import train_common as tc


def conv_bn(cin, cout, k=3, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.conv2 = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout
                         else nn.Identity())

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.shortcut(x))


def build_model(widths=(32, 64, 128), num_classes=10):
    w1, w2, w3 = widths
    return nn.Sequential(
        tc.Normalize(), conv_bn(1, w1), nn.ReLU(inplace=True),
        BasicBlock(w1, w2, 2), BasicBlock(w2, w2), BasicBlock(w2, w3, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w3, num_classes))


if __name__ == "__main__":
    tc.main(build_model, "fmnist_resnet", tc.parse_args(__doc__, epochs=6))
