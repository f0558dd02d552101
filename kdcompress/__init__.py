"""kdcompress: distil a big image classifier into a small one, export both to ONNX, measure the gain."""

import os as _os

__version__ = "0.1.0"

# onnxruntime's Linux and macOS wheels keep a device id and a queue of usage events under
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ as soon as it is imported, whatever kdc runs. Its opt-out is an
# environment variable read at import (ORT_DISABLE_TELEMETRY in the 1.2x-1.3x wheels; ORT_TELEMETRY_DISABLED, the
# name its privacy notes give, in later ones). kdc sets both before anything imports onnxruntime, unless the user
# set them: export ORT_DISABLE_TELEMETRY=0 to let it collect again. README.md, "Privacy", says what is still written.
for _name in ("ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED"):
    _os.environ.setdefault(_name, "1")
