"""Disk housekeeping: pruning touches only finished runs; the sweep warns before the disk fills."""

import json

from annot.prune import check_free_space, prune


def make_run(root, name, status):
    d = root / name
    c = d / "checkpoints" / "step-4"
    c.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"status": status}))
    (c / "checkpoint.json").write_text('{"step": 4}')
    (c / "training_state.pt").write_bytes(b"x" * 1000)
    (c / "adapter_model.safetensors").write_bytes(b"y" * 500)
    return c


def test_prune_keeps_interrupted_runs_resumable(tmp_path):
    done = make_run(tmp_path, "done", "complete")
    running = make_run(tmp_path, "running", "running")
    n, freed = prune([tmp_path])
    assert (n, freed) == (1, 1000)
    assert not (done / "training_state.pt").exists() and (done / "adapter_model.safetensors").exists()
    assert (running / "training_state.pt").exists()  # still needed to resume
    n, freed = prune([tmp_path], adapters=True)
    assert (n, freed) == (1, 500) and (done / "checkpoint.json").exists()


def test_disk_warning(tmp_path):
    lines = []
    assert check_free_space(tmp_path / "new" / "sweep", 2, 1024, lines.append)
    assert not lines
    assert not check_free_space(tmp_path, 10, 2**60, lines.append)
    assert "remaining runs need about" in lines[0] and "annot prune" in lines[0]
