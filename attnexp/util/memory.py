"""The C allocator on CPU at long sequences: large blocks served by their own mmap.

The chunked attention path (``attnexp.attention.design``) allocates and frees a score block of up
to 16 MiB per block of query rows. glibc serves the first by mmap, then raises its mmap threshold
and serves the rest from its heap, where the small long-lived allocations autograd makes between
them split the freed blocks: the process grows by about a block per block although the tensors
alive stay linear in N (one ``additive`` step of ``mha`` at N = 8,192 grew the process by over a
gigabyte). ``mmap_large_blocks`` fixes the threshold instead, once per process, the first time a
call runs many blocks on CPU: every large block is then mapped and returned on free, at the price
of fresh zeroed pages for each (``python -m attnexp.bench.process_memory`` measures both).
"""

from __future__ import annotations

import ctypes

AUTO_MMAP = True  # False: leave the allocator as it is (the benchmark's side-by-side figure)
LARGE_ALLOCATION_BYTES = 4 * 2**20  # allocations this large get their own mapping
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
_state = {"mmapped": False}


def mmap_large_allocations(min_bytes: int) -> bool:
    """Have glibc serve every allocation of at least ``min_bytes`` by its own mmap, unmapped on
    free; False where the C library is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, ctypes.c_int(min_bytes)))


def mmap_large_blocks() -> bool:
    """Fix the mmap threshold at ``LARGE_ALLOCATION_BYTES`` once per process (unless
    ``AUTO_MMAP`` is off); whether it is fixed."""
    if AUTO_MMAP and not _state["mmapped"]:
        _state["mmapped"] = mmap_large_allocations(LARGE_ALLOCATION_BYTES)
    return _state["mmapped"]


def mmapped() -> bool:
    """Whether this process fixed the threshold (``mmap_large_blocks``)."""
    return _state["mmapped"]
