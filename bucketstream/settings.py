"""Worker configuration: one validated object, read from the environment.

Every setting is an environment variable ``BUCKETSTREAM_<NAME>``; a
``bucketstream worker`` option of the same name overrides it, and one
validator checks both. A bad value fails at start-up with a message that
names the variable and the problem (see :func:`load`). Nothing is read at
import: a worker's settings are the object :func:`load` returns.
"""

from __future__ import annotations

import math
import re
import socket
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BUCKETSTREAM_"
_BROKER_RE = re.compile(r"^kafka://[^\s:/;,]+(:\d{1,5})?(;[^\s:/;,]+(:\d{1,5})?)*$")


class ConfigError(Exception):
    """Configuration that cannot run; the message names every bad variable."""


class Settings(BaseSettings):
    """What one worker needs to know. Field docs are the README's config table."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    broker: str = Field("kafka://127.0.0.1:9092", description="Kafka bootstrap servers, kafka://host:port[;host:port...]")
    web_host: str = Field("127.0.0.1", description="address the HTTP server binds")
    web_port: int = Field(6066, ge=1, le=65535, description="HTTP port of this worker")
    data_dir: Path | None = Field(None, description="RocksDB state directory, one per worker (default .run/worker-<web_port>); a worker stopped while Kafka was away keeps its unpublished admissions here for the next start")
    node_id: str = Field("", description="this worker's name in logs and metrics (default <hostname>-<web_port>)")
    capacity: float = Field(10.0, description="default rule: bucket capacity in tokens (> 0)")
    rate: float = Field(1.0, description="default rule: refill in tokens per second (> 0; 0.1 = one token every 10 s)")
    limits: Path | None = Field(None, description="limits file (TOML): default, per-resource and per-user rules; overrides capacity/rate")
    app_id: str = Field("bucketstream", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="Faust app id: consumer group and topic prefix")
    partitions: int = Field(8, ge=1, le=1024, description="partitions of the update topic and the table changelog")
    topic_replication: int = Field(1, ge=1, le=16, description="replication factor of the app's topics")
    flush_interval: float = Field(0.01, gt=0, le=5, description="seconds between flushes of this worker's deltas")
    expire_after: float = Field(600.0, gt=0, description="seconds a bucket must have been full and idle before it is deleted (at least capacity/rate)")
    expire_check_interval: float = Field(10.0, gt=0, description="seconds between expiry sweeps")
    max_unconfirmed_keys: int = Field(50_000, ge=1, description="back-pressure: while this worker holds this many admitted states Kafka has not shown it yet, /protected answers 503 (Retry-After: 1) for keys it holds no state of")
    cache_keys: int = Field(200_000, ge=1, description="decoded bucket states kept in memory (least recently read evicted first; a miss is one RocksDB read); about 1 KB of RSS each")
    burst_cap: bool = Field(False, description="cap what one worker spends on a key before Kafka shows it: capacity/(2*(workers-1)) plus its refill share while unconfirmed; for round-robin balancing")
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC port of Envoy's rate limit service (v3 ShouldRateLimit) and the gRPC health service, bound on web_host; 0: off")
    rls_domain: str = Field("bucketstream", pattern=r"^[^\x00-\x1f\x7f]{1,256}$", description="the rate limit service's domain: a request for another domain is answered OK with no limit (as Envoy's ratelimit answers an unknown domain) and counted")
    rls_user_key: str = Field("user", pattern=r"^[^\x00-\x1f\x7f]{1,256}$", description="the descriptor entry key that names the user in rate limit service requests (the resource is the entry 'resource')")
    log_level: str = Field("info", pattern=r"^(?i:debug|info|warning|error|critical)$", description="log level")

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if not _BROKER_RE.match(value):
            raise ValueError(f"must look like kafka://127.0.0.1:9092 (several: kafka://h1:9092;h2:9092), got {value!r}")
        return value

    @field_validator("capacity", "rate", "flush_interval", "expire_after", "expire_check_interval")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be a finite number above 0, got {value!r}")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> "Settings":
        if self.grpc_port and self.grpc_port == self.web_port:
            raise ValueError(f"{ENV_PREFIX}GRPC_PORT must differ from {ENV_PREFIX}WEB_PORT (both {self.web_port})")
        if self.rls_user_key == "resource":
            raise ValueError(f"{ENV_PREFIX}RLS_USER_KEY cannot be 'resource': that entry names the resource")
        if not self.node_id:
            object.__setattr__(self, "node_id", f"{socket.gethostname()}-{self.web_port}")
        if self.data_dir is None:
            object.__setattr__(self, "data_dir", Path(".run") / f"worker-{self.web_port}")
        return self


def load(overrides: dict | None = None) -> Settings:
    """Read and validate the environment, with ``overrides`` (setting name -> value, the
    command line's options) taking precedence; raise ConfigError naming each problem."""
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "configuration"
            got = err.get("input")
            problems.append(f"{name}: {err['msg']}" + (f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""))
        raise ConfigError("bad configuration: " + "; ".join(problems)) from None
