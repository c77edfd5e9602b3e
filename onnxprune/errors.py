"""Errors that the command line turns into a one-line message and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (file, option, data): reported in one line, exit code 2."""


class UnsupportedModel(UserError):
    """The model is valid ONNX but onnxprune cannot work with it (opset, no prunable layer...)."""
