# bucketstream: `make run` and `make test` do everything (venv, deps, a local Kafka).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
KAFKA := deploy/kafka/kafka.sh

.PHONY: help venv kafka kafka-stop run test bench load clean

help:
	@echo "make run         local Kafka broker + two workers (ports 6066, 6067); Ctrl-C stops them"
	@echo "make test        the whole test suite against a real broker it starts itself"
	@echo "make bench       benchmarks side by side (results in bench/results/)"
	@echo "make load        headless Locust run against the workers of 'make run'"
	@echo "make kafka       start the local broker (127.0.0.1:9092) if none answers"
	@echo "make kafka-stop  stop it"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 or newer"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11 or newer is needed ($(PYTHON) is older)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

kafka:
	@$(KAFKA) start

kafka-stop:
	@$(KAFKA) stop

run: venv
	@deploy/run.sh

test: venv
	@$(KAFKA) jars >/dev/null
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	@$(KAFKA) jars >/dev/null
	$(PY) -m bench $(BENCH_ARGS)

load: venv
	$(VENV)/bin/locust -f locustfile.py --headless -u 50 -r 10 -t 30s --host http://127.0.0.1:6066 \
	  --csv bench/results/locust --html bench/results/locust.html

clean:
	rm -rf $(VENV) .run .pytest_cache .hypothesis
