"""Keep freed host memory in the process, so a jitted CPU step does not page its
buffers in again at every call.

XLA:CPU allocates a compiled step's temporary buffer
(``compiled.memory_analysis().temp_size_in_bytes``, hundreds of megabytes for a
train step) with ``malloc`` at every call and frees it when the call returns. glibc
serves a block that large with a fresh ``mmap`` (XLA's worker threads allocate from
their own arenas, which fall back to ``mmap`` as well) and gives it back with
``munmap``, so each step takes one minor page fault, and the kernel zeroes one page,
for every 4 KiB of the buffer: time the step spends in the kernel instead of in
XLA's code. ``bench/NOTES.md`` (issue 15) has the figures.

:func:`retain_freed_memory` sets glibc's ``malloc`` to keep what it frees:
one arena for every thread, no ``mmap`` for large blocks, and no trimming of the
heap. The first step grows the heap, and every later step reuses the same pages.
The cost is resident memory: what is freed is reused by the process but not returned
to the system, and since a small allocation can take part of a freed block (so the
next step's buffer no longer fits in it), the heap can grow to a few times the
step's temporary buffer before it settles. XLA's compiles also get slower (one arena
for its compiler threads), so it pays for long runs of steps with large temp
buffers, not for a short run of a small model. The benchmarks call it at start-up
(``--default-malloc`` turns it off there); ``python -m train`` does with ``--keep-
freed-memory``. It changes nothing on a system without glibc.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_SETTINGS = (
    # One arena: a thread's own arena cannot grow past 64 MiB and falls back to
    # mmap for a large block even when mmap is off.
    (_M_ARENA_MAX, 1),
    (_M_MMAP_MAX, 0),
    # -1 turns trimming off (mallopt(3)): the heap's free top stays mapped.
    (_M_TRIM_THRESHOLD, -1),
)


def retain_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory in the process (see the module
    docstring). Returns whether it applied (``False`` without glibc).

    Call it before the first JAX computation: threads that already have their own
    arena keep it.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
