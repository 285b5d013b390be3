"""Prometheus and Grafana of docker-compose.yml: the wiring and the dashboard's queries.

No Docker engine is needed: the compose file is loaded and validated by the
Compose Specification's reference loader (compose-go, the library behind
``docker compose config``), the rest reads the files. The dashboard's PromQL is
checked against the ``/metrics`` of a real worker, so renaming a metric (or a
label value) breaks this test rather than silently emptying a panel, and the
Prometheus config and every expression are parsed by the image's own
``promtool``. ``make test`` builds both checkers with Go into a cache outside
the repository (``deploy/tools/tools.sh``) and passes them in $COMPOSE_CONFIG
and $PROMTOOL; without them these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "bucketstream.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "bucketstream.yml"

# PromQL words that are not metric names (functions, aggregations, operators, modifiers)
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min", "clamp_max",
    "abs", "absent", "ceil", "floor", "round", "vector", "scalar", "time", "label_replace", "label_join",
    "sum_over_time", "avg_over_time", "max_over_time", "min_over_time", "changes", "resets", "sort", "sort_desc",
}
LABELS_FROM_PROMETHEUS = {"job", "instance"}  # target labels Prometheus adds to every scraped series
SERIES_FROM_PROMETHEUS = {"up"}  # series Prometheus synthesizes per target
GRAFANA_VARS = {"$__rate_interval": "20s", "$__interval": "5s", "$job": ".*"}


def checker(variable: str, what: str) -> str:
    """The path of a checker ``make test`` built (deploy/tools/tools.sh), from its variable.

    Missing, the test skips, but not under CI: there the checker is part of the build.
    """
    path = os.environ.get(variable)
    if path and os.access(path, os.X_OK):
        return path
    why = f"${variable} unset or not executable: {what} not run (`make test` builds it with Go)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def compose_config(*profiles: str) -> subprocess.CompletedProcess:
    """``docker compose [--profile P]... config --format json``, by compose-go itself."""
    tool = checker("COMPOSE_CONFIG", "the compose file's validation by compose-go")
    args = [a for p in profiles for a in ("--profile", p)]
    return subprocess.run([tool, "-f", str(COMPOSE), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def services() -> dict:
    """Every service of docker-compose.yml (all profiles), anchors and merge keys resolved."""
    return yaml.safe_load(COMPOSE.read_text())["services"]


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of the bind mounts in the compose file's short syntax."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (ROOT / source).resolve()
    return out


def workers(services: dict) -> dict[str, dict]:
    """Services built from this repository's Dockerfile: the bucketstream workers."""
    return {name: s for name, s in services.items() if "build" in s}


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


# -- docker compose ------------------------------------------------------------------------

@pytest.mark.parametrize("profile", [[], ["cluster"]], ids=["default", "cluster"])
def test_compose_config_validates_and_binds_the_repo_files(profile):
    proc = compose_config(*profile)
    assert proc.returncode == 0, proc.stderr
    resolved = json.loads(proc.stdout)["services"]
    for name, wanted in [("prometheus", {"/etc/prometheus/prometheus.yml": PROMETHEUS_YML}),
                         ("grafana", {"/etc/grafana/provisioning": GRAFANA / "provisioning",
                                      "/etc/grafana/dashboards": GRAFANA / "dashboards"})]:
        assert name in resolved, f"service {name} missing with profile {profile or 'default'}"
        binds = {v["target"]: Path(v["source"]) for v in resolved[name].get("volumes", []) if v["type"] == "bind"}
        for target, source in wanted.items():
            assert binds.get(target) == source, f"{name} should mount {source} at {target}, has {binds}"
            assert source.exists()


def test_compose_validation_refuses_what_the_specification_does_not_allow(tmp_path):
    """The checker is a validator, not a YAML reader: a misspelt key, a port that is no port."""
    tool = checker("COMPOSE_CONFIG", "the compose file's validation by compose-go")
    text = COMPOSE.read_text()
    for bad in (text.replace("stop_grace_period:", "stop_grace_perod:", 1),
                text.replace('"9090:9090"', '"9090:ninety"', 1)):
        assert bad != text
        broken = tmp_path / "docker-compose.yml"
        broken.write_text(bad)
        proc = subprocess.run([tool, "-f", str(broken)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and proc.stderr, proc.stdout[:500]


def test_images_are_pinned_and_ports_published(services):
    for name, image, port in [("prometheus", "prom/prometheus:", 9090), ("grafana", "grafana/grafana:", 3000)]:
        s = services[name]
        assert s["image"].startswith(image)
        tag = s["image"].split(":", 1)[1]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin a version, not {tag!r}"
        assert f"{port}:{port}" in s["ports"]


# -- Prometheus ----------------------------------------------------------------------------

def test_prometheus_scrapes_every_worker_on_its_web_port_every_5s(services):
    conf = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert conf["global"]["scrape_interval"] == "5s"
    scraped = {}
    for job in conf["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job.get("scrape_interval", "5s") == "5s"
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped[host] = (job["job_name"], int(port))
    ws = workers(services)
    assert set(scraped) == set(ws), f"scraped {sorted(scraped)}, worker services {sorted(ws)}"
    for name, (job, port) in scraped.items():
        assert int(ws[name]["environment"]["BUCKETSTREAM_WEB_PORT"]) == port, f"{name}: wrong port in job {job}"
        # the cluster profile's workers have their own job, so the dashboard can tell the stacks apart
        in_cluster = "cluster" in ws[name].get("profiles", [])
        assert job == ("bucketstream-cluster" if in_cluster else "bucketstream"), name


def promtool() -> str:
    return checker("PROMTOOL", "Prometheus's own parser")


def test_promtool_accepts_the_prometheus_config():
    proc = subprocess.run([promtool(), "check", "config", "--syntax-only", str(PROMETHEUS_YML)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_parses_every_dashboard_expr():
    tool = promtool()
    for title, expr in exprs(json.loads(DASHBOARD.read_text())):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        proc = subprocess.run([tool, "--experimental", "promql", "format", expr],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{title}: {expr}\n{proc.stdout}{proc.stderr}"


# -- Grafana -------------------------------------------------------------------------------

def test_grafana_provisioning_points_at_prometheus_and_the_dashboards(services):
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert ds["type"] == "prometheus"
    url = urlparse(ds["url"])
    assert url.hostname == "prometheus" and f"{url.port}:{url.port}" in services["prometheus"]["ports"]
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    grafana = mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    assert grafana[provider["options"]["path"]] == DASHBOARD.parent
    home = PurePosixPath(services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert grafana[str(home.parent)] / home.name == DASHBOARD


def test_every_panel_uses_the_provisioned_datasource_by_uid():
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    for p in dashboard["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": ds["uid"]}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], p["title"]
    for var in dashboard["templating"]["list"]:
        assert var["datasource"] == {"type": "prometheus", "uid": ds["uid"]}, var["name"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_has_the_panels_the_issue_asks_for():
    text = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in json.loads(DASHBOARD.read_text())["panels"]}
    wanted = {
        "decisions": "bucketstream_decisions_total",
        "429": 'outcome="refused"',
        "replication delay": "bucketstream_replication_delay_seconds_bucket",
        "latency": "bucketstream_decision_seconds_bucket",
        "flushed": "bucketstream_updates_merged_total",
        "keys": "bucketstream_keys",
        "ready": "bucketstream_ready",
    }
    for word, metric in wanted.items():
        assert any(word in title.lower() and metric in expr for title, expr in text.items()), word


# -- the queries against a real worker's /metrics --------------------------------------------

SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def metric_names(expr: str) -> set[str]:
    """Every identifier of an expr that is no PromQL word: the metric names."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    bare = GROUPING.sub(" ", bare)
    names = set(re.findall(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return names - PROMQL_WORDS


def scrape(w) -> dict[str, list[dict]]:
    status, _, body = w.request("GET", "/metrics")
    assert status == 200
    samples: dict[str, list[dict]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s.labels)
    return samples


@pytest.mark.broker
def test_every_metric_and_label_in_the_dashboard_is_exposed_by_a_worker(pool, tmp_path):
    limits = tmp_path / "limits.toml"
    limits.write_text(textwrap.dedent("""
        [default]
        capacity = 1
        rate = 0.01

        [resources.upload]
        capacity = 1
        rate = 0.01
        shadow = true
    """))
    (w,) = pool.start(1, limits=limits)
    # every labelled child the dashboard selects must exist: allowed, refused, shadow_refused, a bad request
    assert [w.protected("bob")[0] for _ in range(2)] == [200, 429]
    assert [w.protected("erin", "/protected/upload")[0] for _ in range(2)] == [200, 200]
    assert w.request("POST", "/protected")[0] == 400
    # the merge agent counts the worker's own flushed states coming back from the update topic
    def merged_counted():
        s = scrape(w)
        return s if "bucketstream_updates_merged_total" in s else None
    samples = wait_until(merged_counted, 30, 0.5, "bucketstream_updates_merged_total exposed")

    dashboard = json.loads(DASHBOARD.read_text())
    for title, expr in exprs(dashboard):
        names = metric_names(expr)
        assert names & set(samples), f"{title}: no bucketstream metric in {expr}"
        for name in names:
            assert name in samples or name in SERIES_FROM_PROMETHEUS, \
                f"{title}: {name} is not exposed by a worker (exposed: {sorted(samples)})"
        used = LABELS_FROM_PROMETHEUS | {label for n in names for s in samples.get(n, []) for label in s}
        for name, matchers in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(matchers):
                if label in LABELS_FROM_PROMETHEUS or name in SERIES_FROM_PROMETHEUS:
                    continue
                values = {s.get(label) for s in samples[name]}
                assert values - {None}, f"{title}: {name} has no label {label}"
                if op == "=":
                    assert value in values, f"{title}: {name}{{{label}={value!r}}} never exposed (has {values})"
        for group in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in used, f"{title}: grouping by {label}, which no series of {names} has"
    # the stack variable lists the jobs that have this metric
    for var in dashboard["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"]).groups()
        assert metric in samples and label in LABELS_FROM_PROMETHEUS, var["name"]
