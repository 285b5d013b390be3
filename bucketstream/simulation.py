"""A deterministic discrete-event simulation of one hot key on N nodes: the seed's merge against ours.

Setting: requests arrive at a fixed rate and go round-robin over ``nodes``
nodes. Each node decides from its own view: its own state joined with the
last whole state it received from every other node. Replication: when a
node's state changes, the whole state reaches every other node ``delay``
seconds later (or, with ``flush_interval > 0``, the state at the next flush
tick does, one message per node per tick). Event times are integer
microseconds, so a run is exactly repeatable.

Two merges:

* ``"seed"``: the seed's bucket per node, ``(tokens, last_refill)``, refilled
  and spent locally (``tokens = min(C, tokens + R·Δt)``, spend 1 if
  ``tokens ≥ 1``), merged on receipt with ``tokens = min(a, b)``,
  ``last_refill = max(a, b)``. It publishes after each admission ("check +
  consume locally, publish the update", as docs/design.md describes the seed);
  with ``seed_sends_every_request`` it publishes after every request instead.
* ``"ours"``: :mod:`bucketstream.crdt`; a state changes (and is sent) only
  when a request is admitted.

Reported per run: admitted ÷ ideal (ideal = ``C + R·duration``, the classic
single bucket's allowance), the worst excess of the admitted count over
docs/design.md's bound ``C + R·t + (N-1)·min(C + R·d, b)`` with ``b = ∞`` over
every prefix ``[0, t]`` (``d`` = delay + flush interval; ≤ 0 = always within), and
the most admissions in any window of ``window`` seconds (a classic bucket
allows ``C + R·window``).

Run ``python -m bucketstream.simulation`` for the table.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

from bucketstream import crdt

__all__ = ["MERGES", "SimResult", "simulate", "main"]

MERGES = ("seed", "ours")
_US = 1_000_000


@dataclass(frozen=True, slots=True)
class SimResult:
    merge: str
    nodes: int
    delay: float
    admitted: int
    ideal: float  # C + R·duration
    ratio: float  # admitted / ideal
    max_excess_over_bound: float  # max over t of admitted(0..t) - bound(t); <= 0: within the bound
    worst_window: int  # most admissions in any window of `window` seconds
    messages: int  # states sent (each reaches nodes - 1 receivers)


def _us(seconds: float, what: str) -> int:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {seconds!r}")
    return round(seconds * _US)


def _node_id(i: int) -> int:
    """A deterministic, random-looking 63-bit slot id for node ``i``."""
    return ((i + 1) * 0x9E3779B97F4A7C15) % crdt.MAX_NODE


def simulate(
    merge: str,
    nodes: int,
    capacity: float = 10.0,
    rate: float = 10.0,
    duration: float = 60.0,
    request_rate: float = 1000.0,
    delay: float = 0.1,
    flush_interval: float = 0.0,
    window: float = 1.0,
    seed_sends_every_request: bool = False,
) -> SimResult:
    """Run one scenario (see the module docstring).

    ``seed_sends_every_request``: the seed sends its state after every
    request (its refill moves ``last_refill`` each time) instead of only
    after an admission.
    """
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
    if type(nodes) is not int or nodes < 1:
        raise ValueError(f"nodes must be an int >= 1, got {nodes!r}")
    if not (math.isfinite(request_rate) and request_rate > 0):
        raise ValueError(f"request_rate must be a positive number, got {request_rate!r}")
    rule = crdt.Rule(capacity, rate)
    dur_us = _us(duration, "duration")
    delay_us = _us(delay, "delay")
    flush_us = _us(flush_interval, "flush_interval")
    window_us = _us(window, "window")
    num, den = Fraction(request_rate).as_integer_ratio()

    # per node: ours -> BucketState; seed -> [tokens, last_refill_us]
    if merge == "ours":
        states: list = [crdt.BucketState()] * nodes
    else:
        states = [[float(capacity), 0] for _ in range(nodes)]
    ids = [_node_id(i) for i in range(nodes)]
    queue: deque[list] = deque()  # [deliver_us, sender, payload, pending]; FIFO since all delays are equal
    last_sent: list[list | None] = [None] * nodes
    epoch = rule.epoch
    extra = (nodes - 1) * (capacity + rate * (delay_us + flush_us) / _US)  # docs/design.md's bound, b = ∞

    admitted = 0
    messages = 0
    max_excess = -math.inf
    recent: deque[int] = deque()  # admission times within the last window
    worst_window = 0
    i = 0
    while True:
        t = (i * _US * den) // num
        if t > dur_us:
            break
        node = i % nodes
        i += 1
        # deliver everything that has arrived by t
        while queue and queue[0][0] <= t:
            msg = queue.popleft()
            msg[3] = False  # delivered
            sender, payload = msg[1], msg[2]
            if merge == "ours":
                for j in range(nodes):
                    if j != sender:
                        states[j] = crdt.join(states[j], payload)
            else:
                tok, last = payload
                for j in range(nodes):
                    if j != sender:
                        s = states[j]
                        if tok < s[0]:
                            s[0] = tok
                        if last > s[1]:
                            s[1] = last
        # decide
        if merge == "ours":
            decision, new = crdt.try_consume(states[node], rule, ids[node], epoch + t / _US)
            allowed = decision.allowed
            changed = allowed
            if allowed:
                states[node] = new
                payload = new
        else:
            s = states[node]
            level = s[0] + rate * (t - s[1]) / _US
            s[0] = capacity if level > capacity else level
            s[1] = t if t > s[1] else s[1]
            allowed = s[0] >= 1.0
            if allowed:
                s[0] -= 1.0
            changed = allowed or seed_sends_every_request
            payload = (s[0], s[1])
        if changed:
            deliver = (t if flush_us == 0 else -(-t // flush_us) * flush_us) + delay_us
            msg = last_sent[node]
            if flush_us and msg is not None and msg[3] and msg[0] == deliver:
                msg[2] = payload  # same flush tick, not sent yet: the later state replaces it
            else:
                msg = [deliver, node, payload, True]
                queue.append(msg)
                last_sent[node] = msg
                messages += 1
        if allowed:
            admitted += 1
            excess = admitted - (capacity + rate * t / _US + extra)
            if excess > max_excess:
                max_excess = excess
            recent.append(t)
            while recent[0] <= t - window_us:
                recent.popleft()
            if len(recent) > worst_window:
                worst_window = len(recent)
    ideal = capacity + rate * duration
    return SimResult(
        merge=merge,
        nodes=nodes,
        delay=delay,
        admitted=admitted,
        ideal=ideal,
        ratio=admitted / ideal,
        max_excess_over_bound=max_excess if admitted else 0.0,
        worst_window=worst_window,
        messages=messages,
    )


def main() -> None:
    capacity, rate, duration, request_rate = 10.0, 10.0, 60.0, 1000.0
    print(
        f"one hot key, round-robin over N nodes, C={capacity:g}, R={rate:g}/s, {duration:g} s, "
        f"{request_rate:g} requests/s; ideal = C + R·t = {capacity + rate * duration:g}"
    )
    print("bound: admitted(0..t) <= C + R·t + (N-1)·(C + R·d); excess <= 0 means within it at every instant")
    header = (
        f"{'merge':>5} {'N':>2} {'d (ms)':>6} {'admitted':>8} {'ratio':>6} "
        f"{'max excess':>10} {'worst 1 s':>9} {'msgs':>6}"
    )
    print(header)
    print("-" * len(header))
    for nodes in (1, 3, 5):
        for delay in (0.010, 0.100):
            for merge in MERGES:
                r = simulate(merge, nodes, capacity, rate, duration, request_rate, delay)
                print(
                    f"{r.merge:>5} {r.nodes:>2} {delay * 1000:>6g} {r.admitted:>8} {r.ratio:>6.3f} "
                    f"{r.max_excess_over_bound:>10.1f} {r.worst_window:>9} {r.messages:>6}"
                )
    print()
    print("the seed's merge in docs/design.md's setting, admitted ÷ ideal for N = 3, 4, 5:")
    for every in (False, True):
        for delay in (0.010, 0.100):
            runs = (
                simulate("seed", n, capacity, rate, duration, request_rate, delay, seed_sends_every_request=every)
                for n in (3, 4, 5)
            )
            ratios = ", ".join(f"{r.ratio:.2f}x" for r in runs)
            sends = "after every request" if every else "after each admission"
            print(f"  d = {delay * 1000:>3g} ms, publishing {sends}: {ratios}")


if __name__ == "__main__":
    main()
