"""Circuit Desk engine: models, instrumentation, methods. Pure Python + torch; never imports Qt.

Importing this package is cheap (no torch): the GUI imports it before its window shows.
"""

import os

__version__ = "0.1.0"

# Air-gapped by construction: nothing in the Hugging Face stack may reach for the network.
# Set before transformers/huggingface_hub are imported anywhere in the process.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # our own progress reporting replaces library bars
