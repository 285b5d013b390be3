"""Fixtures: one real Kafka broker per test session (and a SASL_SSL one, kafka-secure.sh, when a test asks), worker pools per test.

The broker is Apache Kafka (KRaft) from deploy/kafka/kafka.sh on a free port
with its own state directory, so `make test` never touches the broker of
`make run`. Teardown stops every process, also when a test fails or the run
is interrupted (atexit is the last resort).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings as hsettings

from tests.cluster import Broker, SecureBroker, WorkerPool, free_port, free_port_pair

hsettings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
hsettings.register_profile("dev", max_examples=100, deadline=None)
hsettings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _running(broker_class, port: int, prefix: str):
    """A broker in its own state directory for the whole session; stopped and removed at the end."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    b = broker_class(port=port, state_dir=state)
    atexit.register(b.stop)
    try:
        b.start()
        yield b
    finally:
        b.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def broker():
    yield from _running(Broker, free_port_pair(), "bucketstream-kafka-")


@pytest.fixture(scope="session")
def secure_broker():
    """A broker that takes clients only over SASL_SSL (deploy/kafka/kafka-secure.sh)."""
    yield from _running(SecureBroker, free_port(), "bucketstream-kafka-secure-")


@pytest.fixture
def secure_pool(secure_broker, tmp_path):
    """Workers with the secure broker's credentials (``pool.start(n)``); all stop at teardown."""
    p = WorkerPool(secure_broker, tmp_path, **secure_broker.settings)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def pool(broker, tmp_path):
    """Start workers with ``pool.start(n)``; all of them stop at teardown."""
    p = WorkerPool(broker, tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def pytest_runtest_makereport(item, call):
    # on failure, attach the tails of the worker logs to the report
    if call.when == "call" and call.excinfo is not None:
        funcargs = getattr(item, "funcargs", {})
        p = funcargs.get("pool") or funcargs.get("secure_pool")
        if p is not None:
            for w in p.workers:
                item.add_report_section("call", f"worker {w.port} log", w.log_tail(60))
