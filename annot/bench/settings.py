"""Fixed parameters of `annot bench`: the corpus, seed, learning rate, batch sizes and warm-up."""

from __future__ import annotations

from annot.kinds import kind_names

KINDS = kind_names(lm_eval=True)  # the kinds lm-eval can express, from the probe-kind registry
WRAPPER = "none"
SEED = 0
LR = 1e-3
PROBE_BATCH_SIZE = 16    # annot's default (probes.batch_size)
LM_EVAL_BATCH_SIZE = 8
WARMUP_STEPS = 2  # not timed: the first step allocates everything, and the second still faults ~100k
                  # pages in while the tuned heap settles (0 from the third; annot/allocator.py) and runs
                  # ~15-20% slow (5.95 s vs 4.5-5.4 s for steps 3-9); both engines skip the same
