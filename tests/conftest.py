import os
import tempfile

# Nothing in the test suite may reach the network or write into the user's Hugging Face home: every cache
# (Hub, datasets, evaluate) of this process and of the processes it starts lives in a throw-away folder.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="medsa-tests-hf-home-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from helpers import tiny_sam_model
from medsa_peft.tiny_sam import tiny_sam_config


@pytest.fixture
def sam_config():
    return tiny_sam_config()


@pytest.fixture
def sam():
    """A tiny SamModel with real random weights, eval mode, fresh for every test."""
    torch.manual_seed(0)
    return tiny_sam_model()
