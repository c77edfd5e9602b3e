"""Small MobileNetV2 for Fashion-MNIST (28x28x1) -> models/fmnist_mobilenet.onnx.

Normalize, stem conv3x3-BN-ReLU6 (16 @28x28, stride 1), inverted residual
blocks (t, c, n, s) below -- 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6,
1x1 project-BN, residual add when stride 1 and same width -- then 1x1
conv-BN-ReLU6 to 256, GAP, Dropout, Linear(256, 10).  Blocks come from
``mobilenetv2.py``; training/export/evaluation from ``train_common.py``.

    python models/fmnist_mobilenet.py [--epochs N] [--out-dir models]
"""
import torch.nn as nn

try:
    from . import train_common as tc
    from .mobilenetv2 import MobileNetV2
except ImportError:  # run as a script from models/
    import train_common as tc
    from mobilenetv2 import MobileNetV2

FMNIST_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 48, 3, 2], [6, 96, 2, 1]]


def build_model(num_classes=10):
    return nn.Sequential(tc.Normalize(), MobileNetV2(
        num_classes, FMNIST_SETTING, in_channels=1, stem_channels=16, stem_stride=1,
        last_channels=256, dropout=0.1))


if __name__ == "__main__":
    tc.main(build_model, "fmnist_mobilenet", tc.parse_args(__doc__, epochs=8))
