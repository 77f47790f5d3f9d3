"""Keep freed memory inside the process, so each training step does not page-fault its tensors again.

    from annot.allocator import tune_allocator
    tune_allocator()        # once per process; train() and the CLI call it

A training or scoring step allocates the same large tensors every time (activations, logits and
their gradients: hundreds of MiB on the default model) and frees them at the end. With glibc's
default settings, blocks above the mmap threshold get their own mapping that is unmapped on free, and
free memory at the top of the heap above the trim threshold is handed back to the kernel; the next
step faults every page in again, and the kernel zeroes each one. Measured on a LoRA step of
SmolLM2-135M (4 x 256 tokens, 2 CPU cores, separate processes): ~200-235k page faults per step with
the defaults, 98k in the second step and 0 from the third once tuned; steps 5.5-7.3 s -> 4.1-4.5 s.

Raising both thresholds keeps the memory mapped for reuse. The process's peak memory is the same
(the same tensors are alive at the peak); what changes is that it is not returned between steps.
Set ANNOT_MALLOC_TUNE=0 to keep the C library's defaults. A no-op off glibc (macOS, musl).

glibc's heap still fragments: a step's large tensors are interleaved with millions of small C++
allocations (tensor headers, autograd nodes), so freed activations leave holes that later steps cannot
reuse; the quickstart's training held ~1.1 GiB of live heap in a ~2.2 GiB arena. oneTBB's scalable
allocator (the `tbb` wheel, a dependency on Linux x86-64) keeps large blocks apart from small objects;
`use_tbb_malloc()` re-executes the `annot` command once with it preloaded (LD_PRELOAD must be set
before the process starts). Measured with `annot bench` (README, Memory). Set ANNOT_MALLOC=glibc to
keep the C library's malloc; without the wheel (other platforms) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from pathlib import Path

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30    # 1 GiB: larger than any single tensor of a step on the models annot targets

_state: dict[str, bool] = {}


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); True when they are in effect."""
    if "tuned" in _state:
        return _state["tuned"]
    tuned = False
    if os.environ.get("ANNOT_MALLOC_TUNE", "1") != "0" and platform.system() == "Linux" \
            and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            tuned = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) & bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD))
        except (OSError, AttributeError):
            tuned = False
    _state["tuned"] = tuned
    return tuned


PROXY = "libtbbmalloc_proxy.so.2"   # replaces malloc/free/...; needs libtbbmalloc.so.2 beside it
CORE = "libtbbmalloc.so.2"
_PRELOAD_SAVED = "ANNOT_PRELOAD_SAVED"  # the caller's LD_PRELOAD, restored in the re-executed process


def tbb_malloc_libraries() -> list[str] | None:
    """[libtbbmalloc.so.2, libtbbmalloc_proxy.so.2] of the installed `tbb` wheel (absolute paths), or
    None: not Linux, the wheel not installed, or its files missing."""
    if platform.system() != "Linux":
        return None
    import importlib.metadata as md

    try:
        files = md.files("tbb") or []
    except md.PackageNotFoundError:
        return None
    found = {f.name: Path(f.locate()).resolve() for f in files if f.name in (CORE, PROXY)}
    if set(found) != {CORE, PROXY} or not all(p.is_file() for p in found.values()):
        return None
    return [str(found[CORE]), str(found[PROXY])]


def malloc_in_use() -> str:
    """"tbb" when oneTBB's proxy allocator is loaded in this process, else "glibc" (or the C library)."""
    try:
        if PROXY.split(".so")[0] in Path("/proc/self/maps").read_text():
            return "tbb"
    except OSError:
        pass
    return platform.libc_ver()[0] or "libc"


def wanted_malloc() -> str:
    """The allocator the user asked for with ANNOT_MALLOC: "tbb" (default, also when empty) or "glibc";
    anything else is a ValueError whose text is the one-line fix."""
    value = os.environ.get("ANNOT_MALLOC", "").strip().lower() or "tbb"
    if value not in ("tbb", "glibc"):
        raise ValueError(f"environment variable ANNOT_MALLOC: {value!r} is not an allocator annot knows; "
                         f"use tbb (the default) or glibc, or unset it")
    return value


def tbb_environment(env: dict) -> dict | None:
    """A copy of `env` that makes a new process start with oneTBB's malloc, or None if unavailable."""
    libs = tbb_malloc_libraries()
    if not libs:
        return None
    out = dict(env)
    out[_PRELOAD_SAVED] = env.get("LD_PRELOAD", "")
    out["LD_PRELOAD"] = " ".join(libs + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    return out


def restore_preload() -> bool:
    """In a process started with tbb_environment(): put the caller's LD_PRELOAD back (for children) and
    return True; elsewhere do nothing and return False."""
    if _PRELOAD_SAVED not in os.environ:
        return False
    saved = os.environ.pop(_PRELOAD_SAVED)
    if saved:
        os.environ["LD_PRELOAD"] = saved
    else:
        os.environ.pop("LD_PRELOAD", None)
    return True


def use_tbb_malloc(argv: list[str] | None = None) -> None:
    """Run this command under oneTBB's malloc: re-execute the process once (same interpreter, same
    arguments) with the library preloaded. Returns without doing anything when ANNOT_MALLOC=glibc, when
    the library is not installed, or in the re-executed process itself, where it puts the caller's
    LD_PRELOAD back so that child processes (lm-eval, wandb, git) start with the user's environment."""
    if restore_preload():  # the re-executed process: the library is loaded (or could not be)
        return
    if wanted_malloc() != "tbb" or malloc_in_use() == "tbb":
        return
    env = tbb_environment(dict(os.environ))
    if env is None:
        return
    args = argv if argv is not None else [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)
