"""Test-wide settings: nothing may reach the network (no Hub, no nltk downloader)."""

import os

import pytest
import torch

for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(variable, "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one intra-op thread, and it keeps timings fair to a job beside them.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tok():
    """The packaged MiniLM WordPiece tokenizer (offline)."""
    from hf_pairdots.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def lexicon():
    """A Lexicon over the WordNet nltk finds, installed offline into the venv if missing."""
    from hf_pairdots.augment.lexicon import Lexicon, WordNetUnavailable, ensure_wordnet, install_wordnet

    try:
        ensure_wordnet()
    except WordNetUnavailable:
        install_wordnet()
    return Lexicon()
