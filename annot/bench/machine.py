"""(d) of `annot bench`: peak memory and a description of the machine the figures come from."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window for this process: free heap memory goes back to the system first
    (glibc malloc_trim), then the kernel's high-water mark is set to the current RSS (Linux
    /proc/self/clear_refs). False where that is not possible; peaks then span the whole process."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def window_peak_rss_mib() -> float:
    """The peak RSS (MiB) since the last reset_peak_rss() (VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 10
    except OSError:
        pass
    return rss_mib(resource.RUSAGE_SELF)


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

    from annot.allocator import malloc_in_use
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
            "cuda": torch.version.cuda if cuda else None, "malloc": malloc_in_use()}
