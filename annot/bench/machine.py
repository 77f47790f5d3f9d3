"""(d) of `annot bench`: peak memory and a description of the machine the figures come from."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path


def rss_mib(who: int) -> float:
    """Peak RSS in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict:
    import importlib.metadata as md

    import peft
    import torch
    import transformers

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    cuda = device.startswith("cuda")
    return {"cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device,
            "device_name": torch.cuda.get_device_name(0) if cuda else _cpu_name(), "cpu_name": _cpu_name(),
            "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "lm_eval": version("lm_eval"),
            "cuda": torch.version.cuda if cuda else None}
