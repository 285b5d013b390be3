"""The C allocator's free memory back to the system: glibc's ``malloc_trim`` on a timer, and a fixed mmap threshold.

Why the trim: under steady traffic a worker's RSS crept, about 0.3 MiB a minute with
three workers and skewed traffic, while Python's objects and RocksDB's memory stayed
flat. glibc keeps the chunks freed inside its heaps (RocksDB's threads, the Kafka
client and Python allocate and free there) and gives back only a heap's top by
itself; ``malloc_trim(0)`` also releases every whole free page inside them
(docs/performance-journal.md, "What the creeping RSS is").

Why the threshold: glibc serves a block of 128 KiB or more from a mapping of its own,
unmapped when freed, but the first time such a block is freed it raises that threshold
to the block's size (up to 32 MiB), so later blocks as large stay inside its heaps.
A large dict's table is such a block: the decoded cache and the allowances churn
through keys, and each time one of them is rebuilt the old table is freed inside a
heap, where it stayed until the next trim. Three workers' RSS rose by 6-10 MiB within
a minute and fell at each trim, a saw-tooth of 7 % that a reading of RSS caught at any
height. A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``, which also turns the raising
off) gives such tables back the moment they are freed ("A fixed mmap threshold").

With another C library there are no such calls, and nothing is done.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def trimmer() -> Callable[[], bool] | None:
    """glibc's ``malloc_trim(0)`` (True when it released memory), or None without it."""
    try:
        # the symbols already loaded into this process: its C library's, with no search for the file
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0) == 1


#: malloc.h: mallopt's parameter for the mmap threshold. The setting stops at 32 MiB, as high as
#: glibc's own threshold rises on a 64-bit machine (DEFAULT_MMAP_THRESHOLD_MAX): a fixed one above
#: it would keep more in the heaps than glibc does by itself.
M_MMAP_THRESHOLD = -3


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at ``nbytes`` for this process: every block at least that
    large gets its own mapping, returned to the system when freed, and the threshold no
    longer rises by itself. True when glibc took it; False without glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, nbytes) == 1
