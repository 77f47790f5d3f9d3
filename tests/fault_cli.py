"""`python tests/fault_cli.py [--fsdp-cpu] --kill-at-step N run CONFIG ...`: annot's CLI that SIGKILLs
itself at a checkpoint, for the resume tests.

    --kill-at-step N                every process dies once checkpoint N is saved and probed
    --kill-before-probes-at-step N  the main process dies once checkpoint N is saved, before its probes
    --fsdp-cpu                      with tests/fsdp_cpu.py's FSDP2-on-CPU shim (under torch.distributed.run)

The kill goes in through annot.train.TrainHooks, which this script hands to every train() call of
the run or sweep (annot.run looks annot.train.train up when it trains). Nothing in annot/ reads a
fault setting."""

import functools
import os
import signal
import sys

import annot.train


def kill_at(wanted: int):
    """A hook that SIGKILLs this process (no clean-up, as an OOM kill or a pulled plug) at step `wanted`."""
    def hook(step: int) -> None:
        if step == wanted:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def install(hooks: annot.train.TrainHooks) -> None:
    """Every later annot.train.train call gets `hooks`."""
    real = annot.train.train

    @functools.wraps(real)
    def train_with_hooks(*args, **kwargs):
        return real(*args, hooks=hooks, **kwargs)

    annot.train.train = train_with_hooks


def parse(argv: list[str]) -> tuple[annot.train.TrainHooks, list[str]]:
    """(the hooks the leading options ask for, the CLI's own arguments after them)."""
    hooks, args = annot.train.TrainHooks(), list(argv)
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option == "--fsdp-cpu":
            import fsdp_cpu  # noqa: F401  (patches accelerate on import)
        elif option == "--kill-at-step":
            hooks.after_checkpoint = kill_at(int(args.pop(0)))
        elif option == "--kill-before-probes-at-step":
            hooks.after_save = kill_at(int(args.pop(0)))
        else:
            raise SystemExit(f"fault_cli.py: unknown option {option}")
    return hooks, args


if __name__ == "__main__":
    hooks, cli_args = parse(sys.argv[1:])
    install(hooks)
    from annot.cli import main

    main(args=cli_args)
