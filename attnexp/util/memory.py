"""The C allocator on CPU at long sequences: large blocks served by their own mmap.

The chunked attention path (``attnexp.attention.design``) allocates and frees a score block of up
to 16 MiB per block of query rows. glibc serves the first by mmap, then raises its mmap threshold
and serves the rest from its heap, where the small long-lived allocations autograd makes between
them split the freed blocks: the process grows by about a block per block although the tensors
alive stay linear in N (one ``additive`` step of ``mha`` at N = 8,192 grew the process by over a
gigabyte). ``mmap_large_blocks`` fixes the threshold instead, the first time a call runs many
blocks on CPU, at the size of a block's scores (``additive``'s are 16 times smaller than its
hidden tensor): every block's tensors are then mapped and returned on free, at the price of fresh
zeroed pages for each (``python -m attnexp.bench.process_memory`` measures both).
"""

from __future__ import annotations

import ctypes

AUTO_MMAP = True  # False: leave the allocator as it is (the benchmark's side-by-side figure)
LARGE_ALLOCATION_BYTES = 4 * 2**20  # at most this large an allocation gets its own mapping
SMALLEST_THRESHOLD_BYTES = 2**20  # the threshold never goes below this
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
_state = {"threshold": 0}  # the threshold this process set (0: none)


def mmap_large_allocations(min_bytes: int) -> bool:
    """Have glibc serve every allocation of at least ``min_bytes`` by its own mmap, unmapped on
    free; False where the C library is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, ctypes.c_int(min_bytes)))


def mmap_large_blocks(block_bytes: int) -> bool:
    """Fix the mmap threshold (unless ``AUTO_MMAP`` is off) at the size of one block of scores,
    between ``SMALLEST_THRESHOLD_BYTES`` and ``LARGE_ALLOCATION_BYTES``, lowering it if an earlier
    call set it higher: the tensors of one block (scores, weights, their gradients) are then
    mapped. Whether a threshold is set."""
    threshold = min(LARGE_ALLOCATION_BYTES, max(SMALLEST_THRESHOLD_BYTES, block_bytes))
    current = _state["threshold"]
    if AUTO_MMAP and (not current or threshold < current) and mmap_large_allocations(threshold):
        _state["threshold"] = threshold
    return mmapped()


def mmapped() -> bool:
    """Whether this process set the threshold (``mmap_large_blocks``)."""
    return bool(_state["threshold"])
