"""Activations saved for backward live in a few persistent blocks, not scattered over the C heap.

    slab = SavedSlab.for_model(model)      # None off CPU, under activation checkpointing, or when switched off
    with slab.saving():                    # forward: every large saved tensor is copied into the slab
        loss = forward(...)
    loss.backward()
    slab.release()                         # the graph is gone: the next forward reuses the same blocks

Why: on CPU each training step allocates hundreds of tensors that autograd keeps until backward
(residual stream, normalised inputs, attention inputs and outputs, the MLP's gate and up) between many
short-lived temporaries of other sizes. glibc's allocator (tuned by annot.allocator to keep freed memory
for reuse) cannot fit the next step's tensors into the holes that pattern leaves, and the heap settles
far above what is alive: on SmolLM2-135M (4 x 256 tokens, LoRA) 1.1 GiB live at the end of the forward
in a 2.2 GiB heap (mallinfo2), i.e. ~1.1 GiB of resident memory that holds nothing.

Here a saved tensor of at least MIN_BYTES is copied, with its exact layout (sizes, strides, dtype), into
blocks of BLOCK_BYTES that are allocated once and reused every step (a bump pointer reset by
`release`); the original is then an ordinary temporary and is freed as soon as the forward drops it.
The heap only ever holds short-lived tensors and stays close to their peak. The copies are exact, so
gradients are bit-identical; the cost is one memcpy of the saved bytes per step. A tensor saved twice
(the same object, e.g. the attention output saved by SDPA and by o_proj's LoRA) is copied once;
parameters and buffers are never copied. ANNOT_SAVED_SLAB=0 turns it off.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import warnings

import torch
from torch.utils.weak import WeakIdKeyDictionary

MIN_BYTES = 1 << 16          # smaller saved tensors stay where they are (their bytes do not matter)
BLOCK_BYTES = 64 << 20       # one block; a larger tensor gets a block of its own size
ALIGN = 64                   # bytes; the alignment PyTorch's CPU allocator gives every tensor


def _extent(t: torch.Tensor) -> int | None:
    """Elements spanned by t's view (from its first element), or None for overlapping views."""
    if t.numel() == 0:
        return 0
    if any(st == 0 and sz > 1 for sz, st in zip(t.shape, t.stride())):
        return None  # an expanded view: its copy cannot be written in place
    return 1 + sum((sz - 1) * st for sz, st in zip(t.shape, t.stride()))


def _mapped_bytes(n: int) -> torch.Tensor:
    """n bytes of anonymous memory mapped for this block alone (outside the C heap, so the heap's
    short-lived tensors never fragment around it); a uint8 tensor that keeps the mapping alive."""
    m = mmap.mmap(-1, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "non-writable buffer": an anonymous mapping is writable
        return torch.frombuffer(m, dtype=torch.uint8)


def _inside(view: torch.Tensor, base: torch.Tensor) -> bool:
    """Whether every element of `view` lies within the extent of `base` (same storage)."""
    n, m = _extent(view), _extent(base)
    if n is None or m is None:
        return False
    lo = view.storage_offset() - base.storage_offset()
    return lo >= 0 and lo + n <= m


def _is_rms_norm(module) -> bool:
    """RMSNorm layers of HF models (LlamaRMSNorm, Qwen2RMSNorm, ...): y = w * x / rms(x), a pure
    function of x given the weight, so y can be rebuilt from x in backward bit for bit."""
    return type(module).__name__.endswith("RMSNorm") and isinstance(getattr(module, "weight", None), torch.Tensor)


class _Rebuild:
    """A saved tensor left out of the slab: `module.forward(x)` viewed as (shape, stride, offset)."""

    __slots__ = ("module", "x", "shape", "stride", "offset", "key")

    def __init__(self, module, x, shape, stride, offset, key):
        self.module, self.x, self.shape, self.stride, self.offset, self.key = module, x, shape, stride, offset, key


class SavedSlab:
    """Persistent blocks for the tensors autograd saves during one forward (see the module docstring)."""

    def __init__(self, keep: set[int] | None = None, block_bytes: int = BLOCK_BYTES, min_bytes: int = MIN_BYTES):
        self.keep = keep or set()   # storage addresses never copied (parameters, buffers)
        self.block_bytes = block_bytes
        self.min_bytes = min_bytes
        self.blocks: list[torch.Tensor] = []
        self.block = 0              # bump pointer: block index and byte offset
        self.offset = 0
        self.copied = WeakIdKeyDictionary()
        self.recompute = WeakIdKeyDictionary()   # output of a normalisation layer -> (layer, its input)
        self.rebuilt: dict[int, torch.Tensor] = {}  # the last output rebuilt in backward
        self.keys = WeakIdKeyDictionary()           # output -> its number (see _key)
        self.counter = itertools.count()
        self.active = False
        self.handles: list = []     # forward hooks on the normalisation layers (removed by close)
        self.bytes_copied = 0       # since the last release (for tests and the bench)

    @classmethod
    def for_model(cls, model, min_bytes: int = MIN_BYTES) -> "SavedSlab | None":
        """A slab for training `model` on CPU, or None where it does not apply: off CPU (CUDA's caching
        allocator has no such holes), under activation checkpointing (its own saved-tensor hooks), or
        with ANNOT_SAVED_SLAB=0."""
        if os.environ.get("ANNOT_SAVED_SLAB", "1") == "0":
            return None
        params = list(model.parameters()) + list(model.buffers())
        if not params or any(p.device.type != "cpu" for p in params):
            return None
        if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
            return None
        slab = cls({p.untyped_storage().data_ptr() for p in params}, min_bytes=min_bytes)
        slab.handles = [m.register_forward_hook(slab._record) for m in model.modules() if _is_rms_norm(m)]
        return slab

    def _take(self, nbytes: int) -> torch.Tensor:
        """nbytes of slab memory (uint8), ALIGN-aligned, from the current block or the next one."""
        nbytes = -(-nbytes // ALIGN) * ALIGN
        while self.block < len(self.blocks):
            blk = self.blocks[self.block]
            if self.offset + nbytes <= blk.numel():
                out = blk[self.offset:self.offset + nbytes]
                self.offset += nbytes
                return out
            self.block, self.offset = self.block + 1, 0
        blk = _mapped_bytes(max(self.block_bytes, nbytes))
        self.blocks.append(blk)
        self.block, self.offset = len(self.blocks) - 1, nbytes
        return blk[:nbytes]

    def _copy(self, t: torch.Tensor) -> torch.Tensor | None:
        """t's values in slab memory, same sizes and strides; None where t cannot be laid out there."""
        n = _extent(t)
        if not n:
            return None
        buf = self._take(n * t.element_size()).view(t.dtype)[:n]
        out = buf.as_strided(t.shape, t.stride())
        with torch.no_grad():  # the copy must not become a graph node that keeps the original alive
            out.copy_(t)
        self.bytes_copied += n * t.element_size()
        return out

    def pack(self, t: torch.Tensor):
        if t.device.type != "cpu" or t.layout != torch.strided or t.is_sparse:
            return t
        storage = t.untyped_storage()
        if storage.nbytes() < self.min_bytes or storage.data_ptr() in self.keep:
            return t
        # views of one tensor (q and its transpose, x and its reshape) share one copy: key by the view's
        # base, copy the base's whole extent once, and rebuild each view on the copy
        base = t._base if t._base is not None else t
        if base is not t and (t.dtype != base.dtype or not _inside(t, base)):
            base = t  # a view that reinterprets or reaches outside its base: a copy of its own
        made = self.recompute.get(base)
        if made is not None and made[1]._version == made[2]:
            # the output of a normalisation layer whose input is unchanged since: keep the input and
            # rebuild the output in backward
            module, x, _ = made
            px = self.pack(x)
            if px is not x:
                return _Rebuild(module, px, t.shape, t.stride(), t.storage_offset() - base.storage_offset(), self._key(base))
        hit, version = self.copied.get(base, (None, None))
        if hit is None or version != base._version:  # new, or changed in place since its copy was taken
            hit = self._copy(base)
            if hit is None:
                return t
            self.copied[base] = (hit, base._version)
        if t is base:
            return hit
        return hit.as_strided(t.shape, t.stride(), hit.storage_offset() + t.storage_offset() - base.storage_offset())

    def _key(self, out: torch.Tensor) -> int:
        """A number for one normalisation output of this forward (ids of dead tensors are reused)."""
        key = self.keys.get(out)
        if key is None:
            key = self.keys[out] = next(self.counter)
        return key

    def unpack(self, t):
        if not isinstance(t, _Rebuild):
            return t
        out = self.rebuilt.get(t.key)
        if out is None:  # once per output, however many nodes saved it (q, k and v's LoRA all read it)
            with torch.no_grad():
                out = t.module.forward(t.x)
            self.rebuilt = {t.key: out}
        return out.as_strided(t.shape, t.stride, out.storage_offset() + t.offset)

    def _record(self, module, args, output) -> None:
        """Forward hook on normalisation layers: remember which input made which output."""
        if self.active and torch.is_grad_enabled() and len(args) == 1 and isinstance(output, torch.Tensor) \
                and isinstance(args[0], torch.Tensor) and output.shape == args[0].shape:
            self.recompute[output] = (module, args[0], args[0]._version)

    @contextlib.contextmanager
    def saving(self):
        """Saved tensors of the forward run inside go to the slab."""
        self.active = True
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
                yield self
        finally:
            self.active = False
            self.recompute = WeakIdKeyDictionary()  # only outputs of this forward
            self.keys = WeakIdKeyDictionary()

    def release(self) -> None:
        """Backward is done (its graph freed): the next forward writes over the same blocks."""
        self.block, self.offset = 0, 0
        self.copied = WeakIdKeyDictionary()
        self.recompute = WeakIdKeyDictionary()
        self.rebuilt: dict[int, torch.Tensor] = {}
        self.bytes_copied = 0

    def close(self) -> None:
        """Training is over: unhook the normalisation layers and unmap the blocks."""
        for h in self.handles:
            h.remove()
        self.handles = []
        self.release()
        self.blocks = []

    @property
    def reserved_bytes(self) -> int:
        return sum(b.numel() for b in self.blocks)
