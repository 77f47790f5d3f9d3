"""Multi-process set-up: which launches annot's training loop supports and who does what in them.

    accelerate launch --multi_gpu --num_processes 2 -m annot.cli run sweeps/first_run.yaml
    launch = start_launch(batch_size=4)   # inside train(): the Accelerator, this process's rank, FSDP or not

One process: everything here is a no-op. Under `accelerate launch` (DDP, or FSDP version 2) each
process trains its slice of every micro-batch; the main process (rank 0) alone writes files,
probes and reports, the others wait for it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from annot.errors import AnnotError

UNSUPPORTED_DISTRIBUTED = {"DEEPSPEED", "MEGATRON_LM"}  # accelerate's DistributedType values


def is_main_process() -> bool:
    """False in the other processes of a torchrun / `accelerate launch` job (RANK > 0): they train
    their share and write nothing - no rows, reports or summaries."""
    return int(os.environ.get("RANK", "0")) == 0


def launch_state():
    """accelerate's view of this launch, with every process of a torchrun / `accelerate launch` job
    joined. On a machine without an accelerator accelerate only joins processes when asked for CPU
    (ACCELERATE_USE_CPU); otherwise each would believe it is alone and all would write the same run."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    world = int(os.environ.get("WORLD_SIZE", "1"))
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    # the other processes wait while the main one probes a checkpoint (DDP), or a whole run's
    # checkpoints before the next run of a sweep (FSDP): NCCL's 10-minute default would abort them
    timeout = datetime.timedelta(minutes=float(os.environ.get("ANNOT_DIST_TIMEOUT_MIN", "360")))
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or (world > 1 and not has_accelerator),
                         timeout=timeout)
    if state.num_processes != world:
        raise AnnotError(f"launch: WORLD_SIZE={world} but accelerate joined {state.num_processes} process(es); "
                         "launch with `accelerate launch --multi_gpu --num_processes N` (set ACCELERATE_USE_CPU=true "
                         "for CPU processes)")
    return state


@dataclass
class Launch:
    """This process's place in the launch."""
    accelerator: object  # accelerate.Accelerator: prepare, backward, reduce, clip, wait_for_everyone
    rank: int
    world: int
    sharded: bool  # FSDP2: model and optimizer hold shards; checkpoints are gathered, probing waits

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def unwrap(self, model):
        """The model without accelerate's DDP/FSDP wrapper (what is saved and probed)."""
        return self.accelerator.unwrap_model(model)


def start_launch(batch_size: int) -> Launch:
    """Join this launch's processes and refuse the launches the loop does not support, before
    anything is trained or written (DeepSpeed, Megatron-LM, FSDP version 1, a batch that does not
    split evenly over the processes)."""
    from accelerate import Accelerator

    launch_state()
    acc = Accelerator()
    kind = str(getattr(acc.distributed_type, "value", acc.distributed_type))
    if kind in UNSUPPORTED_DISTRIBUTED:
        raise AnnotError(f"accelerate config: distributed_type {kind} is not supported by annot's driver; "
                         "use DDP (`accelerate launch --multi_gpu --num_processes N -m annot.cli run CONFIG`) "
                         "or FSDP2 (add `--use_fsdp --fsdp_version 2`)")
    sharded = kind == "FSDP"
    if sharded and not acc.is_fsdp2:
        raise AnnotError("accelerate config: fsdp_version 1 is not supported by annot's driver; "
                         "launch with `--use_fsdp --fsdp_version 2`")
    if batch_size % acc.num_processes:
        raise AnnotError(f"training.batch_size: {batch_size} is not divisible by the {acc.num_processes} processes; "
                         "make it a multiple")
    return Launch(acc, acc.process_index, acc.num_processes, sharded)
