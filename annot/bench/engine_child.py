"""The process `annot bench` trains one annot engine in (started by annot.bench.isolated).

    python -m annot.bench.engine_child SPEC.json

It builds the model the spec names, trains it with time_annot_train and writes the figures, the
FLOPs terms, the whole process's peak RSS and the malloc it ran under to the spec's `out` file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _child(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from annot.allocator import layer_stats, malloc_in_use, restore_preload, tune_allocator

    restore_preload()  # started preloaded by annot.bench.isolated: the caller's LD_PRELOAD for any children

    tune_allocator()  # as `annot train` does (the small requests stay with glibc under annot's layer)
    import torch

    from annot.bench.machine import window_peak_rss_mib
    from annot.bench.training import time_annot_train
    from annot.config import TrainingConfig
    from annot.models import load_model, load_tokenizer, resolve_model

    tokenizer = load_tokenizer(spec["model"])
    if spec["init"] == "random_init":  # random weights in bf16, as run_bench's random_init engine
        from transformers import AutoConfig, AutoModelForCausalLM

        from annot.models import default_device

        torch.manual_seed(spec["seed"])
        config = AutoConfig.from_pretrained(resolve_model(spec["model"]))
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to(default_device())
    else:
        model = load_model(spec["model"], dtype=spec["dtype"])[0]
    cfg = TrainingConfig(**spec["training"])
    res, flops = time_annot_train(model, tokenizer, spec["examples"], cfg, Path(spec["folder"]), spec["peak"])
    res["peak_rss_mib"] = window_peak_rss_mib()  # no window was reset: the whole process
    res["malloc"] = malloc_in_use()
    res["malloc_layer"] = layer_stats()  # annot's large-block layer: blocks made, reused, released
    res["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
    Path(spec["out"]).write_text(json.dumps({"result": res, "flops": flops}, default=float))


if __name__ == "__main__":
    _child(sys.argv[1])
