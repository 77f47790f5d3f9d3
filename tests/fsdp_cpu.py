"""`python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_cpu.py run CONFIG ...`: annot's CLI
under FSDP2 on CPU processes (gloo), for the tests.

accelerate turns FSDP on only for GPU-type launches (CUDA, XPU, ...), so on a CPU-only machine a
`--use_fsdp` launch silently becomes plain multi-CPU. This shim promotes a multi-CPU launch to FSDP2
(fully_shard over a CPU device mesh, as accelerate does on GPUs) so that the sharded path of the
driver - gathered checkpoints, optimizer state re-sharded on resume, probing after training - runs
in CI. Nothing in annot/ knows about it."""

import accelerate
from accelerate import FullyShardedDataParallelPlugin
from accelerate.utils import DistributedType

_init = accelerate.Accelerator.__init__


def _init_fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if self.state.distributed_type == DistributedType.MULTI_CPU:
        self.state.distributed_type = DistributedType.FSDP
        self.state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT",
            reshard_after_forward=True)


accelerate.Accelerator.__init__ = _init_fsdp_on_cpu

if __name__ == "__main__":
    from annot.cli import main

    main()
