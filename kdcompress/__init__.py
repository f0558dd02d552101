"""kdcompress: distil a big image classifier into a small one, export both to ONNX, measure the gain."""

__version__ = "0.1.0"
