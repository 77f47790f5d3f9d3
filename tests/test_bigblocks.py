"""annot's large-block layer (annot/native/bigblocks.c, preloaded by the `annot` command): large blocks
are reused warm instead of faulted in again, free blocks go back to the kernel before the layer would
hold more than its live blocks' peak plus a slack, and every malloc-family call keeps its C meaning
(sizes, contents, alignment, fork, double free)."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the layer sits on glibc")


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    """The layer compiled as annot builds it (into a cache of this test's own)."""
    from annot import allocator

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("ANNOT_CACHE")
    os.environ["ANNOT_CACHE"] = str(cache)
    try:
        if allocator._compiler() is None:
            pytest.skip("no C compiler on this machine")
        lib = allocator.layer_library()
        assert lib is not None and lib.startswith(str(cache)), "the layer did not build"
        assert allocator.layer_library() == lib  # built once: the second call finds it
    finally:
        if old is None:
            os.environ.pop("ANNOT_CACHE", None)
        else:
            os.environ["ANNOT_CACHE"] = old
    return lib


def _run(layer: str | None, code: str, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANNOT_MALLOC") and k != "LD_PRELOAD"}
    if layer:
        env["LD_PRELOAD"] = layer
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def _json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


STEPS = r"""
import json, resource
import torch
from annot.allocator import layer_stats, malloc_in_use
faults, stats = [], []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    kept = [torch.ones(1024, 1536) for _ in range(24)] + [torch.ones(1024, 49152)]
    del kept
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    stats.append(layer_stats())
print(json.dumps({"malloc": malloc_in_use(), "faults": faults, "stats": stats}))
"""


def test_a_steps_large_tensors_are_reused_warm_without_page_faults(layer):
    """The same tensors every "step": the first step makes the blocks, every later step gets them back
    (no new block, no page faulted in again), where glibc's defaults fault all ~73k pages each step."""
    pages = (24 * 1024 * 1536 + 1024 * 49152) * 4 // 4096
    got = _json(_run(layer, STEPS))
    plain = _json(_run(None, STEPS))
    assert got["malloc"] == "annot" and plain["malloc"] == "glibc" and plain["stats"][0] is None
    first, last = got["stats"][0], got["stats"][-1]
    assert last["new_blocks"] == first["new_blocks"]  # every block made in the first step, none after
    assert last["reused_blocks"] - first["reused_blocks"] == 25 * 5 and last["in_use"] == first["in_use"]
    assert last["released_blocks"] == 0 and last["warm"] >= 24 * 1024 * 1536 * 4  # all kept warm
    assert last["in_use"] + last["warm"] <= last["peak_in_use"] + (64 << 20)  # never above peak + slack
    assert got["faults"][0] > pages // 2
    assert max(got["faults"][1:]) < pages // 100, got["faults"]
    assert min(plain["faults"][1:]) > pages // 2, plain["faults"]  # the cost the layer removes


CAP = r"""
import ctypes, json
from annot.allocator import layer_stats
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
mib = 1 << 20
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
a = libc.malloc(100 * mib)
ctypes.memset(a, 1, 100 * mib)
libc.free(a)
out = {"freed": layer_stats(), "rss_freed": rss()}
b = libc.malloc(50 * mib)     # another size class: holding both would pass the peak (100) + slack (16)
ctypes.memset(b, 1, 50 * mib)
out.update(other=layer_stats(), rss_other=rss())
again = libc.malloc(100 * mib)  # the released block's address range serves its class again
out.update(again=layer_stats(), same=again == a)
print(json.dumps(out))
"""


def test_free_blocks_go_back_to_the_kernel_before_the_layer_passes_its_peak(layer):
    """ANNOT_MALLOC_SLACK_MIB=16: a freed 100 MiB block stays warm (the peak so far is 100 MiB), but a
    50 MiB request of another class would make the layer hold 150 > 100 + 16 MiB, so the warm block is
    released first (RSS drops by ~50 MiB net); a later 100 MiB request reuses its address range."""
    got = _json(_run(layer, CAP, ANNOT_MALLOC_SLACK_MIB="16"))
    mib = 1 << 20
    f, o, a = got["freed"], got["other"], got["again"]
    assert f["in_use"] < mib and f["warm"] >= 100 * mib and f["released_blocks"] == 0  # (< 1 MiB: the interpreter's)
    assert f["peak_in_use"] >= 100 * mib
    # the 100 MiB block released (other warm blocks are the interpreter's own, of >= 128 KiB)
    assert o["released_blocks"] >= 1 and o["cold_blocks"] >= 1 and o["warm"] <= f["warm"] - 100 * mib
    assert o["in_use"] + o["warm"] <= o["peak_in_use"] + 16 * mib
    assert got["rss_other"] < got["rss_freed"] - 30 * mib
    assert got["same"] is True and a["cold_blocks"] == o["cold_blocks"] - 1 and a["new_blocks"] == o["new_blocks"]


CALLS = r"""
import ctypes, json, os
libc = ctypes.CDLL(None)
for name, res, args in [("malloc", ctypes.c_void_p, [ctypes.c_size_t]), ("free", None, [ctypes.c_void_p]),
                        ("realloc", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
                        ("malloc_usable_size", ctypes.c_size_t, [ctypes.c_void_p]),
                        ("posix_memalign", ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t])]:
    getattr(libc, name).restype = res
    getattr(libc, name).argtypes = args
stats = (ctypes.c_size_t * 8)()
libc.annot_bigblocks_stats(stats)
lo = stats[7]
out = {"big_min": lo}
n = 3 * (1 << 20) + 123
p = libc.malloc(n)
out["usable_ok"] = n <= libc.malloc_usable_size(p) <= n + n // 16 + 4096
out["aligned64"] = p % 64 == 0
ctypes.memmove(p, bytes(range(256)) * (n // 256), n // 256 * 256)
q = libc.realloc(p, 9 * (1 << 20))                     # grow: moved, contents kept
out["grow_kept"] = ctypes.string_at(q, 256 * 100) == bytes(range(256)) * 100
r = libc.realloc(q, 2 * (1 << 20))                     # shrink within the block: same pointer
out["shrink_same"] = r == q and ctypes.string_at(r, 256) == bytes(range(256))
s = libc.realloc(r, 1000)                              # to a small size: back to glibc, contents kept
out["small_kept"] = ctypes.string_at(s, 256) == bytes(range(256))
libc.free(s)
small = libc.malloc(1000)
out["small_usable"] = libc.malloc_usable_size(small) >= 1000
libc.free(small)
ptr = ctypes.c_void_p()
out["memalign64"] = libc.posix_memalign(ctypes.byref(ptr), 64, 4 << 20) == 0 and ptr.value % 64 == 0
libc.free(ptr)
out["memalign4096"] = libc.posix_memalign(ctypes.byref(ptr), 4096, 4 << 20) == 0 and ptr.value % 4096 == 0
libc.free(ptr)
out["memalign_bad"] = libc.posix_memalign(ctypes.byref(ptr), 48, 4 << 20)
libc.annot_bigblocks_stats(stats)
out["in_use_after"] = stats[0]
pid = os.fork()
if pid == 0:   # the child can allocate and free large blocks (the lock was not held across fork)
    b = libc.malloc(8 << 20)
    ctypes.memset(b, 7, 8 << 20)
    libc.free(b)
    os._exit(0 if ctypes.string_at(b, 1) is not None else 1)
out["child_exit"] = os.waitpid(pid, 0)[1]
print(json.dumps(out))
"""


def test_malloc_calls_keep_their_meaning(layer):
    got = _json(_run(layer, CALLS))
    assert got["big_min"] == 128 << 10
    assert got["usable_ok"] and got["aligned64"]
    assert got["grow_kept"] and got["shrink_same"] and got["small_kept"] and got["small_usable"]
    assert got["memalign64"] and got["memalign4096"]
    assert got["memalign_bad"] == 22  # EINVAL: not a power of two
    assert got["in_use_after"] == 0
    assert got["child_exit"] == 0


DOUBLE = r"""
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
p = libc.malloc(4 << 20)
libc.free(p)
libc.free(p)
print("still running")
"""


def test_a_double_free_stops_the_process(layer):
    """A large block freed twice aborts at once, instead of handing one block to two owners."""
    got = _run(layer, DOUBLE)
    assert got.returncode == -6 and "still running" not in got.stdout


def test_the_big_threshold_is_configurable(layer):
    code = ("import json; from annot.allocator import layer_stats; import ctypes; "
            "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; p = libc.malloc(300 << 10); "
            "print(json.dumps(layer_stats()))")
    default = _json(_run(layer, code))
    large = _json(_run(layer, code, ANNOT_MALLOC_BIG_MIN=str(1 << 20)))
    assert default["big_min"] == 128 << 10 and default["in_use"] > 0  # 300 KiB: a block of the layer
    assert large["big_min"] == 1 << 20 and large["in_use"] == 0  # below 1 MiB: glibc's


def test_under_an_address_space_limit_the_layer_reserves_at_most_half(layer):
    """`ulimit -v 4 GiB` (RLIMIT_AS): the layer reserves <= 2 GiB of address space, not the 1 TiB it
    takes otherwise, so the process keeps room for everything else, and large blocks are still its."""
    import resource

    code = ("import ctypes, json; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
            "o = (ctypes.c_size_t * 9)(); p = libc.malloc(4 << 20); active = libc.annot_bigblocks_stats(o); "
            "vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]); "
            "print(json.dumps({'active': active, 'in_use': o[0], 'vm_kib': vm}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANNOT_MALLOC")}
    env["LD_PRELOAD"] = layer

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                         preexec_fn=limit)
    out = _json(got)
    assert out["active"] == 1 and out["in_use"] >= 4 << 20
    assert out["vm_kib"] * 1024 <= 4 << 30
    free = _json(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60))
    assert free["active"] == 1 and free["vm_kib"] * 1024 >= 1 << 40  # unlimited: the whole 1 TiB range
