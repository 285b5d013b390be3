"""Deterministic discrete-event simulations against the ideal serialized bucket: merges, and the publishing rule.

Part 1, one hot key on N nodes: the seed's merge against ours (``simulate``).
Part 2, the publishing rule (``simulate_workers``): N real
:class:`bucketstream.local.Limiter` objects, the worker's own code, with
their hold rule (:mod:`bucketstream.hold`), exchanging whole states through a
fake Kafka with a fixed delay; scenarios in ``SCENARIOS``.

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
import random
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

from bucketstream import crdt
from bucketstream.hold import HoldRule, Holds
from bucketstream.local import Limiter

__all__ = ["MERGES", "SCENARIOS", "SimResult", "WorkersResult", "run_workers", "simulate", "simulate_workers", "main"]

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


# -- part 2: the publishing rule ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkersResult:
    scenario: str
    nodes: int
    hold: HoldRule
    requests: int
    admitted: int
    ideal_admitted: int  # what one serialized classic bucket per key admits of the same requests
    ratio: float  # admitted / ideal_admitted
    records: int  # whole states published (update records)
    max_excess_over_bound: float  # over all keys and instants, admitted - bound; <= 0: within it

    @property
    def records_per_request(self) -> float:
        return self.records / self.requests if self.requests else 0.0


def _thin_spread(nodes: int, duration: float, users: int = 100, factor: float = 2.0, rate: float = 1.0):
    """``users`` users, each at ``factor`` times its refill rate, round-robin over the nodes
    (each node sees less than the rate of any one user); users start staggered."""
    step = 1.0 / (factor * rate)
    out = []
    for u in range(users):
        t = step * u / users
        i = u
        while t <= duration:
            out.append((t, i % nodes, u))
            t += step
            i += 1
    return out


def _hot_key(nodes: int, duration: float, request_rate: float = 1000.0):
    return [(i / request_rate, i % nodes, 0) for i in range(int(duration * request_rate) + 1)]


def _burst(nodes: int, duration: float, per_node: int = 20):
    """Every node gets ``per_node`` requests for one key within the same millisecond, then
    again every ``duration / 4`` seconds."""
    out = []
    for wave in range(4):
        t0 = wave * duration / 4
        out += [(t0 + j * 1e-6, n, 0) for j in range(per_node) for n in range(nodes)]
    return out


def _many_users(nodes: int, duration: float, users: int = 5000, each: int = 2):
    """``users`` users far below their limits: ``each`` requests each, spread over the run,
    all to node 0 (the other nodes only listen)."""
    total = users * each
    return [(duration * i / total, 0, (i * 7919) % users) for i in range(total)]


def _skewed(nodes: int, duration: float, users: int = 10_000, request_rate: float = 300.0, seed: int = 7):
    """The shape of real traffic, as ``bench.loadgen`` draws it: user ``floor(users ** u)`` for a
    uniform ``u`` (Zipf, s = 1: user 1 sends about 1/ln(users) of the requests, most users a few),
    at a fixed rate, round-robin over the nodes as a load balancer sends them."""
    draw = random.Random(seed).random
    total = int(duration * request_rate)
    return [(i / request_rate, i % nodes, int(users ** draw())) for i in range(total)]


#: name -> (request generator, capacity, rate, duration, generator keywords)
SCENARIOS = {
    # the trap: 100 users at 2x their refill, round-robin over the nodes
    "thin spread": (_thin_spread, 10.0, 1.0, 30.0, {}),
    "thin spread, 10 min": (_thin_spread, 10.0, 1.0, 600.0, {}),
    # the hold rule's worst case: a large bucket drained slowly stays above the floor for
    # minutes, so only the allowance limits what the nodes keep to themselves
    "slow drain, C=100": (_thin_spread, 100.0, 1.0, 600.0, {"users": 20, "factor": 1.2}),
    "hot key": (_hot_key, 10.0, 10.0, 30.0, {}),
    "burst": (_burst, 10.0, 1.0, 20.0, {}),
    "many users": (_many_users, 100.0, 10.0, 15.0, {}),
    # a few users over their limit, a long tail far below it, and between them users at a
    # tenth to a half of their rate: the allowance alone publishes nearly every admission of these
    "skewed mix": (_skewed, 100.0, 10.0, 120.0, {}),
}

#: the publishing rules side by side in ``main``
RULES = {"publish all": HoldRule(share=0.0), "hold, no defer": HoldRule(defer=0.0), "hold": HoldRule()}


def simulate_workers(scenario: str, nodes: int = 3, hold: HoldRule = HoldRule(), delay: float = 0.02,
                     flush_interval: float = 0.01) -> WorkersResult:
    """Run ``scenario`` on ``nodes`` Limiters: each flush tick, every node's ``take_dirty`` is
    delivered ``delay`` seconds later to every node (itself too, as the peer feed does);
    ``publish_due`` and ``drop_refilled`` run every second. The bound checked at every
    admission, per key: ``C + R·t + (N-1)·(C + R·d + L) + N·A + share·R·t`` with
    ``d = delay + flush_interval`` (docs/design.md, holding back)."""
    make, capacity, rate, duration, kw = SCENARIOS[scenario]
    return run_workers(scenario, make(nodes, duration, **kw), capacity, rate, nodes, hold, delay, flush_interval)


def run_workers(name: str, requests: list[tuple[float, int, int]], capacity: float, rate: float, nodes: int,
                hold: HoldRule, delay: float, flush_interval: float) -> WorkersResult:
    """``simulate_workers`` for explicit ``(seconds, node, user)`` requests (any order)."""
    rule = crdt.Rule(capacity, rate)
    epoch = rule.epoch
    requests = sorted(requests)
    limiters = []
    for i in range(nodes):
        lim = Limiter(_node_id(i), lambda key: None, holds=Holds(hold))
        lim.live_workers = nodes
        limiters.append(lim)
    cap, _ = hold.allowance(rule, nodes)
    held_extra = nodes * cap if hold.enabled else 0.0
    held_rate = hold.share * rate if hold.enabled else 0.0
    late = hold.deferrable(rule) if hold.enabled else 0.0
    extra = (nodes - 1) * (capacity + rate * (delay + flush_interval) + late) + held_extra
    keys: dict[int, bytes] = {}
    admitted: dict[int, int] = {}
    ideal: dict[int, list[float]] = {}  # key -> [level, last t]
    ideal_admitted = total = records = 0
    max_excess = -math.inf
    in_flight: deque[tuple[float, list[tuple[bytes, bytes]]]] = deque()
    next_flush, next_sweep = flush_interval, 1.0

    def advance(t: float) -> None:
        nonlocal next_flush, next_sweep, records
        while True:
            step = min(next_flush, next_sweep, in_flight[0][0] if in_flight else math.inf)
            if step > t:
                return
            if in_flight and in_flight[0][0] == step:
                _, batch = in_flight.popleft()
                for lim in limiters:
                    for key, raw in batch:
                        lim.on_peer_state(key, crdt.decode(raw), epoch + step)
            elif next_flush == step:
                for lim in limiters:
                    batch = lim.take_dirty(epoch + step)
                    if batch:
                        records += len(batch)
                        lim.on_sent([k for k, _ in batch], False, epoch + step)
                        in_flight.append((step + delay, batch))
                next_flush += flush_interval
            else:
                for lim in limiters:
                    lim.publish_due(epoch + step)
                    lim.drop_refilled(epoch + step)
                next_sweep += 1.0

    for t, node, user in requests:
        advance(t)
        key = keys.get(user)
        if key is None:
            key = keys[user] = f"user-{user}".encode()
        total += 1
        level = ideal.setdefault(user, [capacity, t])
        level[0] = min(capacity, level[0] + rate * (t - level[1]))
        level[1] = t
        if level[0] >= 1:
            level[0] -= 1
            ideal_admitted += 1
        if limiters[node].decide(key, rule, epoch + t).allowed:
            n = admitted[user] = admitted.get(user, 0) + 1
            excess = n - (capacity + rate * t + held_rate * t + extra)
            if excess > max_excess:
                max_excess = excess
    n_admitted = sum(admitted.values())
    return WorkersResult(name, nodes, hold, total, n_admitted, ideal_admitted,
                         n_admitted / ideal_admitted if ideal_admitted else 0.0, records,
                         max_excess if n_admitted else 0.0)


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
    print()
    print("the publishing rule: real Limiters on N = 3 nodes, d = 20 ms + 10 ms flush; admitted and records")
    print("against one serialized classic bucket per key; 'publish all' = hold_share 0 (every admission published),")
    print("'hold, no defer' = hold_defer 0 (once the allowance is spent, every admission goes out at the next flush)")
    header = (f"{'scenario':>20} {'rule':>14} {'requests':>8} {'ideal':>7} {'admitted':>8} {'ratio':>6} "
              f"{'records/req':>11} {'max excess':>10}")
    print(header)
    print("-" * len(header))
    for scenario in SCENARIOS:
        for name, hold in RULES.items():
            r = simulate_workers(scenario, 3, hold)
            print(f"{scenario:>20} {name:>14} {r.requests:>8} {r.ideal_admitted:>7} {r.admitted:>8} {r.ratio:>6.3f} "
                  f"{r.records_per_request:>11.4f} {r.max_excess_over_bound:>10.1f}")


if __name__ == "__main__":
    main()
