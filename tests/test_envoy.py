"""deploy/envoy/envoy.yaml: Envoy's own bootstrap message accepts it, and it asks the workers of docker-compose.yml.

The file is parsed into ``envoy.config.bootstrap.v3.Bootstrap`` with the
messages generated from envoyproxy/data-plane-api (``xds-protos``), unknown
fields refused, every ``typed_config`` resolved to its type. No Envoy binary
and no Docker engine are needed; Envoy itself loading it has not been seen here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
# the typed_config types of envoy.yaml: imported so that their Any values resolve
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from bucketstream import rls
from bucketstream.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ENVOY_YAML = ROOT / "deploy" / "envoy" / "envoy.yaml"
COMPOSE = ROOT / "docker-compose.yml"


def parse(text: str) -> bootstrap_pb2.Bootstrap:
    return json_format.ParseDict(yaml.safe_load(text), bootstrap_pb2.Bootstrap(), ignore_unknown_fields=False)


@pytest.fixture(scope="module")
def bootstrap() -> bootstrap_pb2.Bootstrap:
    return parse(ENVOY_YAML.read_text())


def unpack(any_msg, cls):
    out = cls()
    assert any_msg.Unpack(out), f"{any_msg.type_url} is not {cls.__name__}"
    return out


def http_manager(bootstrap) -> http_connection_manager_pb2.HttpConnectionManager:
    (listener,) = bootstrap.static_resources.listeners
    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    return unpack(network_filter.typed_config, http_connection_manager_pb2.HttpConnectionManager)


def test_the_file_is_an_envoy_bootstrap(bootstrap):
    assert [c.name for c in bootstrap.static_resources.clusters] == ["bucketstream_rls", "backend"]


@pytest.mark.parametrize("good, bad", [
    ("failure_mode_deny:", "failure_mode_denny:"),  # a misspelt field
    ("port_value: 10000", "port_value: ten"),  # a value of the wrong type
    ("envoy.extensions.filters.http.ratelimit.v3.RateLimit", "envoy.extensions.filters.http.ratelimit.v3.RateLimitt"),
])
def test_the_parse_refuses_what_envoy_would_refuse(good, bad):
    text = ENVOY_YAML.read_text()
    assert good in text
    with pytest.raises(json_format.ParseError):
        parse(text.replace(good, bad, 1))


def test_every_request_asks_the_rate_limit_service_for_its_user(bootstrap):
    manager = http_manager(bootstrap)
    names = [f.name for f in manager.http_filters]
    assert names == ["envoy.filters.http.ratelimit", "envoy.filters.http.router"]  # before the router
    limit = unpack(manager.http_filters[0].typed_config, rate_limit_pb2.RateLimit)
    settings = Settings()
    assert limit.domain == settings.rls_domain
    assert limit.rate_limit_service.grpc_service.envoy_grpc.cluster_name == "bucketstream_rls"
    assert limit.rate_limit_service.transport_api_version == 2  # V3
    (vhost,) = manager.route_config.virtual_hosts
    (action,) = [a for r in vhost.rate_limits for a in r.actions]
    assert action.request_headers.header_name == "x-user-id"
    assert action.request_headers.descriptor_key == settings.rls_user_key
    # no route has rate limits of its own, which would replace the virtual host's
    assert all(not r.route.rate_limits for r in vhost.routes)


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_the_rls_cluster_is_every_workers_grpc_port_over_http2_and_health_checked(bootstrap):
    (cluster,) = [c for c in bootstrap.static_resources.clusters if c.name == "bucketstream_rls"]
    options = unpack(cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
                     http_protocol_options_pb2.HttpProtocolOptions)
    assert options.explicit_http_config.HasField("http2_protocol_options")  # gRPC
    (check,) = cluster.health_checks
    assert check.grpc_health_check.service_name == rls.SERVICE
    endpoints = {(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
                 for group in cluster.load_assignment.endpoints for e in group.lb_endpoints}
    workers = {name: s for name, s in compose_services().items() if "build" in s and "profiles" not in s}
    assert endpoints == {(name, int(s["environment"]["BUCKETSTREAM_GRPC_PORT"])) for name, s in workers.items()}


def test_compose_runs_envoy_with_this_file():
    envoy = compose_services()["envoy"]
    assert envoy["image"].startswith("envoyproxy/envoy:v1.")
    assert "./deploy/envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro" in envoy["volumes"]
    assert envoy["command"] == ["-c", "/etc/envoy/envoy.yaml"]
    assert "10000:10000" in envoy["ports"]
