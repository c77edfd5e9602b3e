"""Small MobileNetV2 for Fashion-MNIST (28x28x1) -> models/fmnist_mobilenet.onnx.

Normalize, stem conv3x3/s2-BN-ReLU6 (16 @14x14), inverted residual blocks
(t, c, n, s) below -- 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1
project-BN, residual add when stride 1 and same width (4 adds) -- then 1x1
conv-BN-ReLU6 to 256 @7x7, GAP, Dropout, Linear(256, 10).  ~118k parameters.
The stride-2 stem and t=4 keep CPU training cost close to fmnist_resnet's
(depthwise/BN layers are memory bound on CPU).  Blocks come from
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

FMNIST_SETTING = [[1, 16, 1, 1], [4, 24, 2, 1], [4, 48, 3, 2], [4, 96, 1, 1]]


def build_model(num_classes=10):
    return nn.Sequential(tc.Normalize(), MobileNetV2(
        num_classes, FMNIST_SETTING, in_channels=1, stem_channels=16, stem_stride=2,
        last_channels=256, dropout=0.1))


if __name__ == "__main__":
    tc.main(build_model, "fmnist_mobilenet", tc.parse_args(__doc__, epochs=8))
