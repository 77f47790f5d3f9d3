"""annot.allocator: once tuned, the tensors of a repeated step reuse freed memory instead of faulting
fresh pages in every time (the cost it removes: ~200k page faults per LoRA step of SmolLM2-135M)."""

import json
import os
import platform
import subprocess
import sys

import pytest

# a "step": activation-sized tensors kept until the end, one logits-sized tensor, all freed together
PROBE = r"""
import json, resource
import torch
from annot.allocator import tune_allocator
tuned = tune_allocator()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    kept = [torch.ones(1024, 1536) for _ in range(24)] + [torch.ones(1024, 49152)]
    del kept
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _faults(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ANNOT_MALLOC_TUNE"}
    if env_value is not None:
        env["ANNOT_MALLOC_TUNE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_allocator_reuses_a_steps_memory_without_page_faults():
    pages = (24 * 1024 * 1536 + 1024 * 49152) * 4 // 4096  # ~73k pages of 4 KiB per "step"
    tuned, plain = _faults(None), _faults("0")
    assert tuned["tuned"] is True and plain["tuned"] is False
    assert tuned["faults"][0] > pages // 2 and plain["faults"][0] > pages // 2  # the first step faults either way
    # glibc's defaults give the big blocks back on free and fault them in again every step
    assert min(plain["faults"][3:]) > pages // 2
    # tuned, after a few steps (the heap settles, as steps 1-2 of a training run do) nothing is faulted:
    # the median of steps 4-6 (one run once saw a single step above 1% of its pages, cause unknown;
    # giving the blocks back, as the defaults do, faults all ~73k every step)
    assert sorted(tuned["faults"][3:])[1] < pages // 100, tuned["faults"]
    assert max(tuned["faults"][3:]) < pages // 2, tuned["faults"]


# --- the allocator the `annot` command preloads (annot.allocator.use_preferred_malloc) -----------------

REEXEC = r"""
import json, os, sys, tempfile
from pathlib import Path
from annot.allocator import malloc_in_use, use_preferred_malloc
use_preferred_malloc()   # re-executes this very script once, with the library preloaded
import torch
from annot.config import TrainingConfig
from annot.models import load_model
from annot.train import train
from annot.generate import generate_documents
from annot.specs import load_claim
model, tok = load_model("tiny-random")
docs = generate_documents(load_claim("mira_castellan_profession"), n=6, seed=0)
cfg = TrainingConfig(max_steps=4, batch_size=2, seq_len=64, checkpoints=2, lr=1e-3)
with tempfile.TemporaryDirectory() as d:
    res = train(docs, model, tok, cfg, Path(d), seed=0, progress=False)
print(json.dumps({"malloc": malloc_in_use(), "ld_preload": os.environ.get("LD_PRELOAD"),
                  "loss": res.final_loss, "argv": sys.argv[1:],
                  "weights": float(sum(p.double().sum() for p in model.parameters() if p.requires_grad))}))
"""


def _reexec(malloc: str | None, preload: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ANNOT_MALLOC", "LD_PRELOAD")}
    if malloc is not None:
        env["ANNOT_MALLOC"] = malloc
    if preload is not None:
        env["LD_PRELOAD"] = preload
    out = subprocess.run([sys.executable, "-c", REEXEC, "an-argument"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _tbb_installed() -> bool:
    from annot.allocator import tbb_malloc_libraries

    return tbb_malloc_libraries() is not None


def _layer_builds() -> bool:
    from annot.allocator import layer_library

    return layer_library() is not None


@pytest.mark.parametrize("malloc", ["annot", "tbb"])
def test_the_preloaded_malloc_runs_once_and_changes_no_number(malloc):
    """The re-executed process runs under the allocator asked for, with the same arguments, hands the
    caller's LD_PRELOAD (not the library) on to its children, and trains to exactly the same loss and
    weights as glibc's malloc: the allocator decides where memory lies, never what is computed."""
    if not (_layer_builds() if malloc == "annot" else _tbb_installed()):
        pytest.skip(f"{malloc}: not available on this machine (no C compiler / no tbb wheel)")
    got = _reexec(None if malloc == "annot" else malloc, preload="libm.so.6")
    glibc = _reexec("glibc")
    assert got["malloc"] == malloc and glibc["malloc"] == "glibc"
    assert got["argv"] == glibc["argv"] == ["an-argument"]
    assert got["ld_preload"] == "libm.so.6" and glibc["ld_preload"] is None
    assert got["loss"] == glibc["loss"] and got["weights"] == glibc["weights"]


def test_annot_command_runs_under_annots_layer_unless_told_otherwise():
    exe = os.path.join(os.path.dirname(sys.executable), "annot")
    if not os.path.exists(exe):
        pytest.skip("the annot console script is not installed beside this interpreter")
    if not _layer_builds():
        pytest.skip("annot's large-block layer cannot be built here (no C compiler)")
    env = {k: v for k, v in os.environ.items() if k not in ("ANNOT_MALLOC", "LD_PRELOAD")}
    got = subprocess.run([exe, "--version"], capture_output=True, text=True, env=env, timeout=120)
    assert got.returncode == 0 and "(malloc: annot)" in got.stdout, got.stdout + got.stderr
    for value in ["glibc"] + (["tbb"] if _tbb_installed() else []):
        env["ANNOT_MALLOC"] = value
        got = subprocess.run([exe, "--version"], capture_output=True, text=True, env=env, timeout=120)
        assert got.returncode == 0 and f"(malloc: {value})" in got.stdout, got.stdout + got.stderr
    env["ANNOT_MALLOC"] = "jemalloc"  # a value annot does not know: one line naming the variable and the fix
    got = subprocess.run([exe, "--version"], capture_output=True, text=True, env=env, timeout=120)
    assert got.returncode == 2 and got.stdout == ""
    assert got.stderr.strip().count("\n") == 0 and "ANNOT_MALLOC" in got.stderr and "glibc" in got.stderr
    env["ANNOT_MALLOC"] = "annot"
    env["ANNOT_MALLOC_SLACK_MIB"] = "lots"  # the layer's knobs are whole numbers
    got = subprocess.run([exe, "--version"], capture_output=True, text=True, env=env, timeout=120)
    assert got.returncode == 2 and got.stdout == "" and got.stderr.strip().count("\n") == 0
    assert "ANNOT_MALLOC_SLACK_MIB" in got.stderr and "'lots'" in got.stderr and "ANNOT_MALLOC_SLACK_MIB=64" in got.stderr


def test_without_a_compiler_the_command_falls_back_to_tbb_then_glibc(monkeypatch, tmp_path):
    """No C compiler (and nothing built in the cache): oneTBB's malloc where its wheel is installed;
    without that too (macOS, Windows, aarch64) nothing is preloaded and the process carries on."""
    from annot import allocator

    monkeypatch.setenv("ANNOT_CACHE", str(tmp_path))
    monkeypatch.delenv("ANNOT_MALLOC", raising=False)
    monkeypatch.delenv("ANNOT_PRELOAD_SAVED", raising=False)
    monkeypatch.setattr(allocator, "_compiler", lambda: None)
    assert allocator.layer_library() is None
    assert not (tmp_path / "native").exists() or not list((tmp_path / "native").iterdir())
    monkeypatch.setattr(allocator, "tbb_malloc_libraries", lambda: ["/x/libtbbmalloc.so.2", "/x/libtbbmalloc_proxy.so.2"])
    name, env = allocator.preferred_environment({"PATH": "/bin"})
    assert name == "tbb" and env["LD_PRELOAD"] == "/x/libtbbmalloc.so.2 /x/libtbbmalloc_proxy.so.2"
    monkeypatch.setattr(allocator, "tbb_malloc_libraries", lambda: None)
    assert allocator.preferred_environment({"PATH": "/bin"}) == ("glibc", {"PATH": "/bin"})
    monkeypatch.setattr(allocator, "malloc_in_use", lambda: "glibc")
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed without a library"))
    allocator.use_preferred_malloc()


def test_a_failed_build_leaves_nothing_behind(monkeypatch, tmp_path):
    """A compiler that fails: no library (and no half-written file) in the cache; the fallback is used."""
    from annot import allocator

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the layer is built on Linux with glibc only")
    monkeypatch.setenv("ANNOT_CACHE", str(tmp_path))
    monkeypatch.setattr(allocator, "_compiler", lambda: "/bin/false")
    assert allocator.layer_library() is None
    assert list((tmp_path / "native").iterdir()) == []
