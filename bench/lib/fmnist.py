"""The shipped Fashion-MNIST models and data (paths relative to the repository root)."""
MODELS = {"fmnist_resnet": "models/fmnist_resnet.onnx", "fmnist_mobilenet": "models/fmnist_mobilenet.onnx"}
CALIB, TEST = "models/fmnist_calib.npz", "models/fmnist_test.npz"
