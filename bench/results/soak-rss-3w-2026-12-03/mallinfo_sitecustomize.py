import sys, os, threading, time, ctypes
if any('worker' in a for a in sys.argv) and 'bench' not in sys.argv[0]:
    class MI(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena","ordblks","smblks","hblks","hblkhd","usmblks","fsmblks","uordblks","fordblks","keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MI
    def loop():
        path = f"/tmp/rss/mi-{os.getpid()}.log"
        while True:
            m = libc.mallinfo2()
            r, w = os.pipe()
            saved = os.dup(2); os.dup2(w, 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2); os.close(saved); os.close(w)
            data = b""
            os.set_blocking(r, False)
            try:
                while True:
                    c = os.read(r, 65536)
                    if not c: break
                    data += c
            except BlockingIOError:
                pass
            os.close(r)
            arenas = [l for l in data.decode(errors='replace').splitlines() if 'arenas allocated current' in l or 'bytes in allocated blocks' in l or 'bytes in available blocks' in l or 'unused pools' in l]
            anon = [l.split()[1] for l in open(f"/proc/{os.getpid()}/status") if l.startswith("RssAnon")]
            with open(path, "a") as f:
                f.write(f"{time.time():.0f} anon={int(anon[0])//1024}M arena={m.arena>>20}M hblkhd={m.hblkhd>>20}M used={m.uordblks>>20}M free={m.fordblks>>20}M blocks={sys.getallocatedblocks()} | " + " | ".join(" ".join(a.split()) for a in arenas) + "\n")
            time.sleep(15)
    threading.Thread(target=loop, daemon=True).start()
