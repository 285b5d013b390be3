"""Probe (before the change): the hold sweep, then part of the resend timer, every SWEEP_EVERY seconds instead of 1
(`WRAP=.../wrap-sweep.py ../newuser-store-read-2026-12-05/run.sh LABEL PORT SWEEP_EVERY=0.1`)."""
import os, sys
import faust
every = float(os.environ.get("SWEEP_EVERY", "1.0"))
timer = faust.App.timer
def patched(self, interval, *a, **kw):
    if kw.get("name") == "bucketstream.agents.resend_unconfirmed":
        interval = every
    return timer(self, interval, *a, **kw)
faust.App.timer = patched
from bucketstream.cli import main  # noqa: E402
sys.argv[0] = "bucketstream"
sys.exit(main())
