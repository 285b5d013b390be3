"""The code's shape: imports point one way, importing builds nothing, private internals are checked in one place."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bucketstream import patches

PACKAGE = Path(__file__).resolve().parent.parent / "bucketstream"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))

#: settings -> pure core -> worker -> tables/agents/web -> app -> cli: a module may import only
#: modules of a lower layer (or of its own layer, for the core's helpers).
LAYERS = [
    {"settings"},
    {"crdt", "hold", "rules", "local", "spill", "validate", "simulation", "metrics", "topics", "patches", "recovery",
     "kafka_auth", "history", "inspect", "keyhash", "heap"},
    {"worker"},
    {"tables", "agents", "web", "rls"},
    {"app"},
    {"cli"},
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def imports(module: str) -> set[str]:
    """The bucketstream modules ``module`` imports, at its top level or inside functions."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "bucketstream":
                out |= {a.name for a in node.names}
            elif node.module.startswith("bucketstream."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bucketstream.")}
    return out & set(MODULES)


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYER), set(MODULES) ^ set(LAYER)


def test_imports_point_one_way():
    wrong = [(m, other) for m in MODULES for other in imports(m) if LAYER[other] > LAYER[m]]
    assert not wrong, f"imports against the layers (module, imported): {wrong}"
    # the registering modules know the worker, never each other
    peers = LAYERS[3]
    assert not [(m, o) for m in peers for o in imports(m) if o in peers and o != m]


def test_the_imports_have_no_cycle():
    graph = {m: imports(m) - {m} for m in MODULES}
    done, on_path = set(), []

    def visit(m: str) -> None:
        if m in on_path:
            pytest.fail("import cycle: " + " -> ".join(on_path[on_path.index(m):] + [m]))
        if m in done:
            return
        on_path.append(m)
        for o in graph[m]:
            visit(o)
        on_path.pop()
        done.add(m)

    for m in MODULES:
        visit(m)


def test_importing_any_module_reads_no_settings_and_starts_nothing():
    """With a configuration that cannot run, every module still imports: only ``settings.load``
    (a worker's start) reads and validates the environment."""
    env = {**os.environ, "BUCKETSTREAM_CAPACITY": "-1", "BUCKETSTREAM_BROKER": "not a url"}
    code = "; ".join(f"import bucketstream.{m}" for m in MODULES) + "; import bucketstream.app as a; " \
        "assert 'app' not in vars(a), 'an app was built at import'"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_private_internals_we_use_are_all_there_in_the_pinned_versions():
    assert patches.missing() == []
    patches.check()


def test_a_missing_private_internal_stops_the_start_naming_it(monkeypatch):
    monkeypatch.setattr(patches, "USED", patches.USED + [(patches.Fetcher, "_renamed_away", "__init__", "a probe")])
    with pytest.raises(patches.PatchError, match=r"aiokafka\.consumer\.fetcher\.Fetcher\._renamed_away \(a probe\)"):
        patches.check()


def test_an_override_the_library_no_longer_calls_stops_the_start_naming_it(monkeypatch):
    monkeypatch.setattr(patches, "CALLS", patches.CALLS + [
        (patches.faust_consumer.Consumer, "_drain_messages", "self.deliver_somehow(", "a probe")])
    with pytest.raises(patches.PatchError, match=r"Consumer\._drain_messages calling 'self\.deliver_somehow\(' \(a probe\)"):
        patches.check()


def test_only_patches_touches_a_librarys_private_names():
    """No ``x._name`` of a library object outside patches.py (our own objects' are fine)."""
    ours = ("self.", "cls.", "other.", "limiter.", "rule.", "old_rule.", "new_rule.", "state.", "a.", "b.", "s.", "new.",
            "small.", "big.")  # objects of our own classes (crdt, local)
    found = []
    for m in MODULES:
        if m == "patches":
            continue
        for node in ast.walk(ast.parse((PACKAGE / f"{m}.py").read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = ast.unparse(node.value) + "."
                if not owner.startswith(ours):
                    found.append(f"{m}: {ast.unparse(node)}")
    assert not found, found


#: What makes a Kafka connection; each must get its brokers, TLS and SASL from kafka_auth.
KAFKA_CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient", "AIOKafkaClient", "create_conn"}


def _kafka_clients_without_auth(path: Path) -> list[str]:
    """Calls of a Kafka client constructor in ``path`` that do not pass ``**kafka_auth.client_kwargs(...)``
    (or ``**kafka``, a parameter documented as its result)."""
    wrong = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name not in KAFKA_CLIENTS:
            continue
        spread = [ast.unparse(k.value) for k in node.keywords if k.arg is None]
        if not any(s == "kafka" or s.startswith(("kafka_auth.client_kwargs(", "client_kwargs(")) for s in spread):
            wrong.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}")
    return wrong


def test_every_kafka_client_connects_through_kafka_auth():
    """A producer, consumer or admin client built without the security settings would connect in
    PLAINTEXT to a broker that wants TLS and SASL: every one of the package's and the bench's
    passes ``**kafka_auth.client_kwargs(settings)``; only kafka_auth's own pre-flight builds
    a connection from its parts."""
    files = [p for p in sorted(PACKAGE.glob("*.py")) if p.stem != "kafka_auth"]
    files += sorted((PACKAGE.parent / "bench").glob("*.py"))
    found = [f for p in files for f in _kafka_clients_without_auth(p)]
    assert not found, found


def test_the_kafka_client_check_sees_a_client_that_bypasses_kafka_auth(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("from aiokafka import AIOKafkaProducer\n"
                    "ok = AIOKafkaProducer(**kafka_auth.client_kwargs(settings), acks='all')\n"
                    "bad = AIOKafkaProducer(bootstrap_servers=['127.0.0.1:9092'], acks='all')\n"
                    "worse = aiokafka.AIOKafkaConsumer(**other_kwargs)\n")
    assert [w.split(":")[1] for w in _kafka_clients_without_auth(code)] == ["3", "4"]
