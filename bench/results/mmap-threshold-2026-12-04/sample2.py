"""Every 0.5 s: RSS, minor faults and CPU ticks of every bucketstream worker process."""
import os, sys, time
out = open(sys.argv[1], "w")
t0 = time.time()
while True:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
            if b"bucketstream" not in cmd or b"worker" not in cmd or b"bench" in cmd.split(b" ")[1:3]:
                continue
            st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            minflt, utime, stime, rss_pages = int(st[7]), int(st[11]), int(st[12]), int(st[21])
            out.write(f"{time.time() - t0:.1f} {pid} {rss_pages * 4 // 1024} {minflt} {utime + stime}\n")
        except (OSError, IndexError, ValueError):
            pass
    out.flush()
    time.sleep(0.5)
