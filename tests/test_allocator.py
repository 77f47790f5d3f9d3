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
    # tuned, after a few steps (the heap settles, as steps 1-2 of a training run do) nothing is faulted
    assert max(tuned["faults"][3:]) < pages // 100
