# Probe only (not part of bucketstream): in each worker, every 30 s, glibc's heap (mallinfo2, all arenas),
# pymalloc's arenas and RssAnon, to mi-<pid>.log. The first worker to start (it wins trim.lock) also
# calls malloc_trim(0) after each sample and logs RssAnon after it: is the RSS that creeps memory
# glibc holds free (trim returns it) or memory in use?
import ctypes
import os
import sys
import threading
import time

OUT = os.environ.get("MI_OUT", "/tmp/rss-trim")

# a worker: python -m bucketstream.cli worker ... (at this point sys.argv holds only "-m" and the arguments)
_CMD = open("/proc/self/cmdline", "rb").read().split(b"\0")
if b"bucketstream.cli" in _CMD and b"worker" in _CMD:
    class MI(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MI
    os.makedirs(OUT, exist_ok=True)
    try:
        fd = os.open(f"{OUT}/trim.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        TRIM = True
    except FileExistsError:
        TRIM = False

    def anon() -> int:
        return next(int(line.split()[1]) for line in open(f"/proc/{os.getpid()}/status") if line.startswith("RssAnon"))

    def loop():
        path = f"{OUT}/mi-{os.getpid()}{'-trim' if TRIM else ''}.log"
        while True:
            time.sleep(30)
            m = libc.mallinfo2()
            line = (f"{time.time():.0f} anonK={anon()} heapM={m.arena / 2**20:.1f} mmapM={m.hblkhd / 2**20:.1f} "
                    f"usedM={m.uordblks / 2**20:.1f} freeM={m.fordblks / 2**20:.1f} topM={m.keepcost / 2**20:.1f} "
                    f"blocks={sys.getallocatedblocks()}")
            if TRIM:
                t0 = time.perf_counter()
                released = libc.malloc_trim(0)
                line += f" trim={released} trim_ms={1e3 * (time.perf_counter() - t0):.1f} anonK_after={anon()}"
            with open(path, "a") as f:
                f.write(line + "\n")

    threading.Thread(target=loop, daemon=True).start()
