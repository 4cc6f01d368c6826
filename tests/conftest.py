import os
import tempfile

# Nothing in the test suite may reach the network or write into the user's Hugging Face home: every cache
# (Hub, datasets, evaluate) of this process and of the processes it starts lives in a throw-away folder.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="medsa-tests-hf-home-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib
import sys

import pytest
import torch

from folder_layouts import template_cases
from helpers import REPO_ROOT, tiny_sam_model
from medsa_peft.tiny_sam import tiny_sam_config


@pytest.fixture(scope="module")
def tiny_sam_dir(tmp_path_factory) -> str:
    """A folder holding a saved tiny SamModel, as `--model_name_or_path` takes it."""
    folder = tmp_path_factory.mktemp("sam")
    tiny_sam_model().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def dataset_cache(tmp_path_factory) -> str:
    """A `datasets` cache folder shared by the tests of one module (the embedded data set is prepared once)."""
    return str(tmp_path_factory.mktemp("datasets-cache"))


@pytest.fixture
def compare_methods(monkeypatch):
    """benchmarks/compare_methods.py as a module (a script, not part of the package)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    monkeypatch.delitem(sys.modules, "compare_methods", raising=False)
    return importlib.import_module("compare_methods")


@pytest.fixture(scope="module")
def mni_cases():
    """(T1, tissue labels) NIfTI pairs: small disjoint crops of the embedded MNI152 template (`folder_layouts`)."""
    return template_cases()


@pytest.fixture
def sam_config():
    return tiny_sam_config()


@pytest.fixture
def sam():
    """A tiny SamModel with real random weights, eval mode, fresh for every test."""
    torch.manual_seed(0)
    return tiny_sam_model()
