"""kdcompress: distil a big image classifier into a small one, export both to ONNX, measure the gain."""

import os as _os

__version__ = "0.1.0"

# onnxruntime's Linux and macOS wheels keep a device id and a queue of usage events under
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ as soon as it is imported, whatever kdc runs. Its opt-out is an
# environment variable read at import (ORT_DISABLE_TELEMETRY in the 1.2x-1.3x wheels; ORT_TELEMETRY_DISABLED, the
# name its privacy notes give, in later ones). kdc sets both before anything imports onnxruntime, unless the user
# set them: export ORT_DISABLE_TELEMETRY=0 to let it collect again. README.md, "Privacy", says what is still written.
# Set but empty (`docker run -e ORT_DISABLE_TELEMETRY` passes it so) counts as unset: onnxruntime reads "" as "collect".
for _name in ("ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED"):
    if not _os.environ.get(_name, "").strip():
        _os.environ[_name] = "1"

# `import openvino` imports its model converter, whose telemetry (the openvino_telemetry package) takes a missing consent
# file as consent: it writes ~/intel/openvino_ga_cid and ~/intel/stats and sends a usage event. Its only opt-outs are
# that consent file (under HOME, which kdc does not write) and CI=true (which other tools read too). OpenVINO falls back
# to its own no-op telemetry when the package cannot be imported (openvino/tools/ovc/telemetry_utils.py), so kdc makes
# it unimportable in its own process before anything imports openvino: nothing is written or sent, and OpenVINO runs as
# before. KDC_OPENVINO_TELEMETRY=1 leaves it to OpenVINO's own consent rules.
if _os.environ.get("KDC_OPENVINO_TELEMETRY", "").strip() != "1":
    import sys as _sys

    _sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
