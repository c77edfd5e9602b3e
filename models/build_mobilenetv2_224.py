"""Export an ImageNet MobileNetV2 (width 1.0, 1000 classes) to ONNX.

    python models/build_mobilenetv2_224.py OUT.onnx [--weights PATH.pth] [--opset 17]

Input "input" [batch, 3, 224, 224] (dynamic batch), output "logits" [batch, 1000].
Without --weights the parameters are random (seed 0); with it, a torchvision
``mobilenet_v2`` state_dict (e.g. mobilenet_v2-b0353104.pth) is loaded with
``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)``.
"""
import argparse

import torch

try:
    from .mobilenetv2 import MobileNetV2
    from .train_common import export_onnx
except ImportError:  # run as a script from models/
    from mobilenetv2 import MobileNetV2
    from train_common import export_onnx


def build(weights=None, seed=0) -> MobileNetV2:
    """Random (seeded) or checkpoint-loaded MobileNetV2 in eval mode."""
    torch.manual_seed(seed)
    model = MobileNetV2()
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True),
                              strict=True)
    return model.eval()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--weights")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()
    export_onnx(build(args.weights), args.out, shape=(1, 3, 224, 224), opset=args.opset)
    print(f"wrote {args.out}")
