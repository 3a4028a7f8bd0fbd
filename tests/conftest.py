"""Test-wide settings: nothing may reach the network (no Hub, no nltk downloader)."""

import os

for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(variable, "1")
