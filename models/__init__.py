"""Model-pack builder: upstream weights (or none, for the dev pack) -> ONNX fp32 + int8.

Needs the ``build`` extra (torch, torchxrayvision, onnx). The runtime never imports
this package; it reads the packs it writes through ``manifest.json`` only.
"""

#: Bump when a pack built by an older recipe must be rebuilt (run.sh/test.sh check it).
BUILDER_VERSION = "3"  # 3: each file's CPU runtime chosen by measurement (ORT, OpenVINO fp32/bf16)
