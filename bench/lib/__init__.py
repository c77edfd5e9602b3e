"""Code the benchmarks share (the scripts import only from here, from models/ and from onnxprune)."""
