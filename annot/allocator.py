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
reuse; the quickstart's training held ~1.1 GiB of live heap in a ~2.2 GiB arena. Keeping the large
blocks apart from the small objects removes the holes. oneTBB's scalable allocator (the `tbb` wheel)
does that, but hands freed blocks of 1-4 MB back to the kernel and faults them in again (60-130k page
faults per training step). annot's own layer (annot/native/bigblocks.c, the default,
ANNOT_MALLOC=annot) takes only the requests of >= 128 KiB (ANNOT_MALLOC_BIG_MIN): each gets a block of
its own outside the heap, kept mapped when freed and handed to the next request of its size class;
free blocks are given back only where the layer would otherwise hold more than the peak of its live
blocks plus ANNOT_MALLOC_SLACK_MIB (64); everything smaller stays with glibc. It is compiled with the
system's C compiler once into $ANNOT_CACHE/native/ (no compiler: oneTBB's malloc, then glibc's).
`use_preferred_malloc()` re-executes the `annot` command once with it preloaded (LD_PRELOAD must be
set before the process starts). ANNOT_MALLOC=tbb or glibc picks the others. Measured with `annot
bench` (README, Memory).
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


MALLOCS = ("annot", "tbb", "glibc")  # ANNOT_MALLOC's values; the first is the default
PROXY = "libtbbmalloc_proxy.so.2"   # replaces malloc/free/...; needs libtbbmalloc.so.2 beside it
CORE = "libtbbmalloc.so.2"
LAYER = "libannot_bigblocks"        # annot's large-block layer, compiled from annot/native/bigblocks.c
LAYER_SOURCE = Path(__file__).parent / "native" / "bigblocks.c"
_PRELOAD_SAVED = "ANNOT_PRELOAD_SAVED"  # the caller's LD_PRELOAD, restored in the re-executed process
LAYER_KNOBS = {"ANNOT_MALLOC_SLACK_MIB": "MiB", "ANNOT_MALLOC_BIG_MIN": "bytes"}  # read by bigblocks.c
LAYER_DEFAULTS = {"ANNOT_MALLOC_SLACK_MIB": 64, "ANNOT_MALLOC_BIG_MIN": 128 << 10}


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


def _compiler() -> str | None:
    import shutil

    found = (shutil.which(name) for name in (os.environ.get("CC"), "cc", "gcc", "clang") if name)
    return next((path for path in found if path), None)


def layer_library() -> str | None:
    """The compiled large-block layer (built once per source version into $ANNOT_CACHE/native/), or None:
    not Linux with glibc, no C compiler, or the build failed (then nothing is left behind)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not LAYER_SOURCE.is_file():
        return None
    import hashlib
    import subprocess
    import tempfile

    from annot.models import cache_dir

    source = LAYER_SOURCE.read_bytes()
    key = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    target = cache_dir() / "native" / f"{LAYER}-{key}.so"
    if target.is_file():
        return str(target)
    cc = _compiler()
    if cc is None:
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{LAYER}-", suffix=".so")
        os.close(fd)
        try:  # built under a temporary name, then renamed: two processes never see half a library
            done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(LAYER_SOURCE), "-lpthread"],
                                  capture_output=True, timeout=120)
            if done.returncode != 0:
                return None
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except (OSError, subprocess.SubprocessError):
        return None
    return str(target)


def layer_stats() -> dict | None:
    """The large-block layer's counters in this process (None when it is not loaded): bytes in use and
    kept warm, cold (released) blocks, address space used, blocks made new / reused / released, the
    size threshold and the highest bytes in use so far."""
    if malloc_in_use() != "annot":
        return None
    out = (ctypes.c_size_t * 9)()
    if not ctypes.CDLL(None).annot_bigblocks_stats(out):
        return None
    keys = ("in_use", "warm", "cold_blocks", "address_space", "new_blocks", "reused_blocks", "released_blocks",
            "big_min", "peak_in_use")
    return dict(zip(keys, (int(v) for v in out)))


def malloc_in_use() -> str:
    """"annot" (the large-block layer) or "tbb" (oneTBB's proxy) when loaded in this process, else
    "glibc" (or the C library's name)."""
    try:
        maps = Path("/proc/self/maps").read_text()
        if LAYER in maps:
            return "annot"
        if PROXY.split(".so")[0] in maps:
            return "tbb"
    except OSError:
        pass
    return platform.libc_ver()[0] or "libc"


def wanted_malloc() -> str:
    """The allocator the user asked for with ANNOT_MALLOC: "annot" (default, also when empty), "tbb" or
    "glibc"; anything else is a ValueError whose text is the one-line fix."""
    value = os.environ.get("ANNOT_MALLOC", "").strip().lower() or MALLOCS[0]
    if value not in MALLOCS:
        raise ValueError(f"environment variable ANNOT_MALLOC: {value!r} is not an allocator annot knows; "
                         f"use annot (the default), tbb or glibc, or unset it")
    for name, unit in LAYER_KNOBS.items():
        given = os.environ.get(name, "").strip()
        if given and not given.isdigit():
            raise ValueError(f"environment variable {name}: {given!r} is not a whole number of {unit}; "
                             f"give one (e.g. {name}={LAYER_DEFAULTS[name]}) or unset it")
    return value


def malloc_environment(malloc: str, env: dict) -> dict | None:
    """A copy of `env` that makes a new process start with `malloc` ("annot" or "tbb") preloaded, or
    None where that one is unavailable."""
    if malloc == "annot":
        lib = layer_library()
        libs = [lib] if lib else None
    elif malloc == "tbb":
        libs = tbb_malloc_libraries()
    else:
        return None
    if not libs:
        return None
    out = dict(env)
    out[_PRELOAD_SAVED] = env.get("LD_PRELOAD", "")
    out["LD_PRELOAD"] = " ".join(libs + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    return out


def preferred_environment(env: dict) -> tuple[str, dict]:
    """(malloc, environment) for a new process under the allocator ANNOT_MALLOC asks for, falling back
    from annot's layer to oneTBB's malloc to glibc's where one is unavailable."""
    want = wanted_malloc()
    for name in MALLOCS[MALLOCS.index(want):-1]:
        got = malloc_environment(name, env)
        if got is not None:
            return name, got
    return "glibc", dict(env)


def restore_preload() -> bool:
    """In a process started with malloc_environment(): put the caller's LD_PRELOAD back (for children)
    and return True; elsewhere do nothing and return False."""
    if _PRELOAD_SAVED not in os.environ:
        return False
    saved = os.environ.pop(_PRELOAD_SAVED)
    if saved:
        os.environ["LD_PRELOAD"] = saved
    else:
        os.environ.pop("LD_PRELOAD", None)
    return True


def use_preferred_malloc(argv: list[str] | None = None) -> None:
    """Run this command under the allocator ANNOT_MALLOC asks for (annot's large-block layer by
    default): re-execute the process once (same interpreter, same arguments) with it preloaded. Returns
    without doing anything for ANNOT_MALLOC=glibc, when no preloadable allocator is available, when one
    is already loaded, or in the re-executed process itself, where it puts the caller's LD_PRELOAD back
    so that child processes (lm-eval, wandb, git) start with the user's environment."""
    if restore_preload():  # the re-executed process: the library is loaded (or could not be)
        return
    if wanted_malloc() == "glibc" or malloc_in_use() in ("annot", "tbb"):
        return
    name, env = preferred_environment(dict(os.environ))
    if name == "glibc":
        return
    args = argv if argv is not None else [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)
