"""The C allocator's free pages back to the system, on a timer: glibc's ``malloc_trim``.

Why: under steady traffic a worker's RSS crept, about 0.3 MiB a minute with three
workers and skewed traffic, while Python's objects and RocksDB's memory stayed flat.
glibc keeps the chunks freed inside its heaps (RocksDB's threads, the Kafka client
and Python allocate and free there) and gives back only a heap's top by itself;
``malloc_trim(0)`` also releases every whole free page inside them
(docs/performance-journal.md, "What the creeping RSS is"). With another C library there is
no such call, and nothing is done.
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
