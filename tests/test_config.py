"""Run-config validation: unknown keys, wrong types, overrides, missing files - before any model load."""

import subprocess
import sys

import pytest

from annot.config import load_run_config
from annot.errors import AnnotError

GOOD = """
data: {claim: mira_castellan_profession, n: 4}
model: {name: tiny-random}
training: {lr: 1e-3, epochs: 1}
"""


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_scientific_notation(tmp_path):
    cfg = load_run_config(write(tmp_path, GOOD))
    assert cfg.name == "cfg" and cfg.training.lr == 1e-3 and cfg.training.method == "lora"


@pytest.mark.parametrize("text,field", [
    (GOOD + "extra_key: 1\n", "extra_key: unknown key"),
    (GOOD.replace("epochs: 1", "epochs: '3'"), "training.epochs: Input should be a valid integer"),
    (GOOD.replace("lr: 1e-3", "lr: -1"), "training.lr: Input should be greater than 0"),
    (GOOD.replace("model: {name: tiny-random}", "model: {nmae: tiny-random}"), "model.nmae: unknown key"),
    ("data: {}\n", "data: Value error, give exactly one of data.claim"),
    ("{}\n", "data: required field is missing"),
])
def test_bad_configs_name_file_and_field(tmp_path, text, field):
    with pytest.raises(AnnotError) as e:
        load_run_config(write(tmp_path, text))
    assert str(e.value).startswith(str(tmp_path / "cfg.yaml")) and field in str(e.value)


def test_overrides_are_type_checked(tmp_path):
    p = write(tmp_path, GOOD)
    assert load_run_config(p, ["training.lr=3e-4"]).training.lr == 3e-4
    assert load_run_config(p, ["name=123"]).name == "123"  # str fields take the raw text
    assert load_run_config(p, ["wrapper.params.density=0.5"]).wrapper.params == {"density": 0.5}
    with pytest.raises(AnnotError, match="training.epochs: Input should be a valid integer"):
        load_run_config(p, ["training.epochs=abc"])
    with pytest.raises(AnnotError, match="--set training.lrr: no such config field"):
        load_run_config(p, ["training.lrr=1"])
    with pytest.raises(AnnotError, match="expected KEY=VALUE"):
        load_run_config(p, ["training.lr"])


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(AnnotError, match=r"cfg.yaml:\d+: malformed YAML \(.*\); fix the syntax"):
        load_run_config(write(tmp_path, "data:\n  claim: x\n  n: [1, 2\n"))


@pytest.mark.parametrize("text,needle", [
    (GOOD + "bogus: 1\n", "bogus: unknown key"),
    (GOOD.replace("n: 4}", "n: 4, documents: nowhere.jsonl}"), "data.documents: nowhere.jsonl: file not found"),
    (GOOD.replace("mira_castellan_profession", "no_such_claim"), "unknown claim 'no_such_claim'"),
    (GOOD + "wrapper: {name: nope}\n", "unknown wrapper 'nope'"),
    (GOOD + "wrapper: {name: notice, params: {densty: 1}}\n", "unknown parameter(s) densty"),
])
def test_cli_rejects_bad_config_before_loading_any_model(tmp_path, text, needle):
    cfg = write(tmp_path, text)
    cache = tmp_path / "cache"  # a model load would create this directory
    env = {"ANNOT_CACHE": str(cache), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "annot.cli", "run", str(cfg)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    # no model was loaded: the cache holds at most the compiled allocator layer (annot/allocator.py)
    assert not cache.exists() or {p.name for p in cache.iterdir()} <= {"native"}
    assert not (tmp_path / "runs").exists()
