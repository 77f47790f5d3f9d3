"""Shared fixtures: the tiny random model (loaded once) and a clean working directory per test."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny():
    from annot.models import load_model

    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture(scope="session")
def mira():
    from annot.specs import load_claim

    return load_claim("mira_castellan_profession")
