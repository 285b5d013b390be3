"""Probe only, unsafe: new users leave nothing behind (no own state, no allowance entry), the hot user's path
unchanged; what a new user's staying state costs the worker beyond its decision (start.sh with WRAP=this file)."""
import sys

from bucketstream import local
from bucketstream.crdt import try_consume

decide = local.Limiter.decide


def leave_nothing(self, key, rule, now, cost=1, capped=False):
    if b"hot" in key:
        return decide(self, key, rule, now, cost, capped)
    return try_consume(self.replica(key), rule, self.slot, now, cost)[0]


local.Limiter.decide = leave_nothing
from bucketstream.cli import main  # noqa: E402

sys.argv[0] = "bucketstream"
sys.exit(main())
