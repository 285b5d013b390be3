# bucketstream: `make run` and `make test` do everything (venv, deps, a local Kafka).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
KAFKA := deploy/kafka/kafka.sh
TOOLS := deploy/tools/tools.sh

.PHONY: help venv tools kafka kafka-stop run test bench load clean

help:
	@echo "make run         local Kafka broker + two workers (ports 6066, 6067); Ctrl-C stops them"
	@echo "make test        the whole test suite against a real broker it starts itself"
	@echo "make bench       benchmarks side by side (results in bench/results/)"
	@echo "make load        headless Locust run against the workers of 'make run'"
	@echo "make kafka       start the local broker (127.0.0.1:9092) if none answers"
	@echo "make tools       build the compose and promtool checkers the tests use (Go, once)"
	@echo "make kafka-stop  stop it"
	@echo "make kafka-cluster / kafka-cluster-stop   three KRaft brokers on 19092, 19094, 19096"
	@echo "make kafka-secure / kafka-secure-stop     a SASL_SSL (SCRAM over TLS) broker on 9094; eval \"\$$(make -s kafka-secure)\""

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 or newer"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11 or newer is needed ($(PYTHON) is older)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# compose-go and promtool into ~/.cache/bucketstream/tools (deploy/tools/tools.sh); the
# first build takes minutes, later ones nothing
tools:
	@$(TOOLS) build

kafka:
	@$(KAFKA) start

kafka-stop:
	@$(KAFKA) stop

.PHONY: kafka-cluster kafka-cluster-stop
# three KRaft nodes on 127.0.0.1:19092,19094,19096 (KAFKA_CLUSTER_PORTS); prints the BUCKETSTREAM_BROKER list
kafka-cluster:
	@deploy/kafka/cluster.sh start

kafka-cluster-stop:
	@deploy/kafka/cluster.sh stop

.PHONY: kafka-secure kafka-secure-stop
# a SASL_SSL (SCRAM, local CA) broker on 127.0.0.1:9094; stdout is KEY=value lines: eval "$(make -s kafka-secure)"
kafka-secure:
	@deploy/kafka/kafka-secure.sh start

kafka-secure-stop:
	@deploy/kafka/kafka-secure.sh stop

run: venv
	@deploy/run.sh

# without Go the compose and promtool checks skip (and fail under CI, where they must run)
test: venv
	@$(KAFKA) jars >/dev/null
	@checkers=$$($(TOOLS) build) || { [ -z "$$CI" ] || exit 1; \
	  echo "make test: no compose/promtool checkers (see above): their tests will skip"; }; \
	set -x; env $$checkers $(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	@$(KAFKA) jars >/dev/null
	$(PY) -m bench $(BENCH_ARGS)

# LOAD_USERS, LOAD_SPAWN_RATE, LOAD_TIME, LOAD_ARGS; workers on BUCKETSTREAM_RUN_PORTS (as `make run`)
load: venv
	@hosts=""; for port in $${BUCKETSTREAM_RUN_PORTS:-6066 6067}; do \
	  curl -fsS -o /dev/null "http://127.0.0.1:$$port/readyz" 2>/dev/null || { \
	    echo "make load: no ready worker on 127.0.0.1:$$port: start the workers with 'make run' in another terminal"; exit 1; }; \
	  hosts="$${hosts:+$$hosts,}http://127.0.0.1:$$port"; \
	done; \
	mkdir -p bench/results; \
	BUCKETSTREAM_LOAD_HOSTS="$${BUCKETSTREAM_LOAD_HOSTS:-$$hosts}" $(VENV)/bin/locust -f locustfile.py --headless \
	  -u $(or $(LOAD_USERS),50) -r $(or $(LOAD_SPAWN_RATE),10) -t $(or $(LOAD_TIME),30s) --host "$${hosts%%,*}" \
	  --csv bench/results/locust --html bench/results/locust.html $(LOAD_ARGS); status=$$?; \
	[ $$status = 0 ] && verdict="every answer checked out" || verdict="FAILURES: wrong answers, see the report"; \
	echo "make load: $$verdict; report bench/results/locust.html, stats bench/results/locust_stats.csv"; \
	exit $$status

clean:
	rm -rf $(VENV) .run .pytest_cache .hypothesis
