"""py-spy profiles of a worker under load, boiled down to where the time goes.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``).
:func:`summarize` turns them into the share of samples per *component*
(what part of the system the sample belongs to, see ``COMPONENTS``) and per
function, both *self* (the function was on top) and *inclusive* (anywhere on
the stack). Shares are of the busy samples of all threads: a thread waiting
for I/O (epoll) or for work (an idle thread pool) is not counted: py-spy reads
such a thread's stack as running, with the blocking call's Python caller on top.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

#: What a sample belongs to: (name, pattern searched in the whole stack, pattern the leaf frame must
#: match or None); the first rule that matches wins. Patterns see "func (file:line)" frames joined by ";".
COMPONENTS = [
    ("logging (debug records: Faust's spinner handler sets the root logger to DEBUG)", r"logging/__init__\.py",
     None),
    ("Faust consumer thread (aiokafka fetch loop)", r"mode/threads\.py", None),
    ("HTTP: bucketstream decision (validate, rules, local, crdt)", r"aiohttp/web_protocol\.py",
     r"bucketstream/(crdt|local|rules|validate|tables)\.py"),
    ("HTTP: bucketstream response building + metrics", r"aiohttp/web_protocol\.py",
     r"bucketstream/(web|metrics)\.py|prometheus_client/|json/"),
    ("HTTP: Faust View dispatch + sensors", r"aiohttp/web_protocol\.py", r"faust/|mode/"),
    ("HTTP: Redis client (redis-py + hiredis)", r"aiohttp/web_protocol\.py", r"redis/|hiredis"),
    ("HTTP: aiohttp request parsing + response writing", r"aiohttp/web_protocol\.py", None),
    ("Redis client (replies, connection pool)", r"redis/|hiredis", None),
    ("flush timer (encode + send_soon)", r"flush_deltas \(", None),
    ("resend timer (and deferred keys due)", r"resend_unconfirmed \(", None),
    ("hold sweep (refilled allowances)", r"sweep_holds \(", None),
    ("merge agent (decode, join, table write, changelog)", r"merge \(.*bucketstream/agents\.py", None),
    ("peer feed (decode, join into the view)", r"peer_feed \(", None),
    ("Faust producer buffer -> aiokafka send", r"faust/transport/producer\.py|_handle_pending", None),
    ("RocksDB (faust store + rocksdict)", r"faust/stores/rocksdb", None),
    ("Faust table recovery (changelog replay, standby writes)", r"faust/tables/recovery|_slurp_changelogs \(", None),
    ("Faust stream/table/changelog machinery", r"faust/(streams|tables|stores|transport|channels|topics)", None),
    ("aiokafka (main loop: producer, peer-feed consumer)", r"aiokafka/", None),
    ("event loop: socket writes, callbacks, scheduling", r"asyncio/", None),
]

#: For a stack that none of the rules above match (py-spy sometimes reads a stack cut
#: short): the leaf frame's file decides.
LEAF_RULES = [
    ("HTTP: bucketstream decision (validate, rules, local, crdt)", r"bucketstream/(crdt|local|rules|validate)\.py"),
    ("HTTP: bucketstream response building + metrics", r"bucketstream/(web|metrics)\.py|prometheus_client/|json/"),
    ("HTTP: Faust View dispatch + sensors", r"faust/web/|faust/sensors/"),
    ("HTTP: the handler (bench/servers.py)", r"bench/servers\.py"),
    ("HTTP: Redis client (redis-py + hiredis)", r"redis/|hiredis"),
    ("HTTP: aiohttp request parsing + response writing", r"aiohttp/|multidict/|yarl/"),
    ("aiokafka (main loop: producer, peer-feed consumer)", r"aiokafka/"),
    ("Faust stream/table/changelog machinery", r"faust/|mode/"),
    ("event loop: socket writes, callbacks, scheduling", r"asyncio/"),
]

#: A leaf frame in which a thread waits (py-spy does not always call that idle): an event loop
#: in epoll, or a thread of a ``ThreadPoolExecutor`` in ``_worker``, whose only line that takes
#: time of its own is its blocking ``work_queue.get`` (a task it runs puts its own frames on top).
#: Counted as work, an idle pool thread was a quarter of a worker's "busy" samples.
_IDLE = re.compile(r"^(EpollSelector\.select|select|poll|epoll) \(|^_worker \(.*concurrent/futures/thread\.py")

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None or (Path(sys.executable).parent / "py-spy").exists()


def _py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


def record(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen:
    """Start sampling ``pid`` for ``seconds``. py-spy pauses the target for each sample (its
    non-blocking mode reads many stacks cut short or mixed); at 100 Hz that costs it a little."""
    cmd = [_py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
           "--format", "raw", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def wait(proc: subprocess.Popen, timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    time.sleep(0.1)


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    f = m.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in f:
            f = f.split(marker, 1)[1]
            break
    f = re.sub(r"^.*?/bucketstream/", "bucketstream/", f)
    return f"{m.group('func')} ({f})"


def _component(frames: list[str]) -> str:
    stack, leaf = ";".join(frames), frames[-1]
    for name, where, leaf_pattern in COMPONENTS:
        if re.search(where, stack) and (leaf_pattern is None or re.search(leaf_pattern, leaf)):
            return name
    for name, pattern in LEAF_RULES:
        if re.search(pattern, leaf):
            return name
    return "other"


def summarize(raw: Path, top: int = 15) -> dict:
    """Shares of samples: by area of the leaf frame, by function (self) and by function (inclusive)."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    area_c: Counter[str] = Counter()
    total = 0
    waiting = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        leaf = frames[-1]
        if _IDLE.search(leaf):
            waiting += n  # a thread waiting for I/O or for work: not work
            continue
        total += n
        self_c[_short(leaf)] += n
        area_c[_component(frames)] += n
        for f in {_short(f) for f in frames}:
            incl_c[f] += n
    share = (lambda c: [(k, v / total) for k, v in c.most_common(top)]) if total else (lambda c: [])
    # inclusive: skip the generic outer frames everything runs under
    boring = re.compile(r"^(<module>|_run_module_as_main|_run_code|run_forever|_run_once|_run|run|main|"
                        r"execute_from_commandline|start|invoke|__call__|worker|run_until_complete) ")
    incl = [(k, v / total) for k, v in incl_c.most_common(200) if not boring.match(k)][:top] if total else []
    return {"samples": total, "waiting": waiting, "areas": share(area_c), "self": share(self_c), "inclusive": incl}


def render(name: str, summary: dict) -> str:
    waiting = summary.get("waiting", 0)
    lines = [f"### {name}", "", f"{summary['samples']} busy samples (100 Hz, all threads; shares are of these). "
             f"Not counted: {waiting} samples of a thread waiting (in epoll, or an idle thread pool).", ""]
    for title, key in (("By component", "areas"), ("Top functions, self", "self"),
                       ("Top functions, inclusive", "inclusive")):
        lines += [f"**{title}**", "", "| share | where |", "|---:|---|"]
        lines += [f"| {v * 100:.1f} % | `{k}` |" for k, v in summary[key]]
        lines.append("")
    return "\n".join(lines)
