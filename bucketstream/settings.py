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
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BUCKETSTREAM_"
_BROKER_RE = re.compile(r"^kafka://[^\s:/;,]+(:\d{1,5})?(;[^\s:/;,]+(:\d{1,5})?)*$")


#: Settings whose values are never shown (messages, logs, /stats).
SECRETS = {ENV_PREFIX + "KAFKA_PASSWORD", ENV_PREFIX + "ADMIN_TOKEN"}


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
    expire_check_interval: float = Field(10.0, gt=0, description="seconds between runs of the expiry sweep (each reads a slice of the active partitions)")
    max_unconfirmed_keys: int = Field(50_000, ge=1, description="back-pressure: while this worker holds this many admitted states Kafka has not shown it yet, /protected answers 503 (Retry-After: 1) for keys it holds no state of")
    cache_keys: int = Field(200_000, ge=1, description="decoded bucket states kept in memory (least recently read evicted first; a miss is one RocksDB read, and a key the table lacks is cached only once this worker holds state of it); about 1 KB of RSS each")
    rocksdb_memtable_mb: float = Field(8.0, ge=0, description="RocksDB memtables of all this worker's partition stores together, in MiB (one write buffer manager: past it the largest is flushed); 0: no shared budget, up to 2 x 4 MiB per store")
    rocksdb_block_cache_mb: float = Field(16.0, ge=0, description="RocksDB block cache of all this worker's partition stores together, in MiB (one LRU cache of the blocks read from flushed data); 0: no shared cache, 8 MiB per store")
    heap_trim_interval: float = Field(60.0, ge=0, allow_inf_nan=False, description="seconds between returns of the C allocator's free memory to the system (glibc's malloc_trim, off the event loop; without it RSS creeps under steady traffic); 0: never")
    heap_mmap_threshold_kb: int = Field(1024, ge=0, le=32768, description="blocks of at least this many KiB get a mapping of their own, returned to the system when freed (glibc's mmap threshold, fixed: by default glibc raises it after the first such free, and the old tables of large dicts stayed in its heaps until a trim); at most 32768, as high as glibc's own rises; 0: glibc's own threshold")
    gc_young_threshold: int = Field(10_000, ge=0, le=1_000_000, description="Python's garbage collector: a young-generation pass once this many more container objects were allocated than freed (CPython's generation-0 threshold, set when the worker becomes ready); a worker keeps a few objects per user seen in the last seconds, and Python's 700 walked them again every few hundred new users; 0: Python's own")
    hold_share: float = Field(0.05, ge=0, le=1, description="publishing rule: share of each rule's rate the cluster may lose to admissions workers keep to themselves (far from the limit); 0 publishes every admission (docs/design.md, holding back)")
    hold_burst: float = Field(0.05, ge=0, le=1, description="publishing rule: share of each rule's capacity (at least 1 token) one worker may keep unpublished on one key at once")
    hold_floor: float = Field(0.5, ge=0, le=1, description="publishing rule: a worker keeps an admission to itself only while its view of the bucket keeps this share of the capacity")
    hold_keys: int = Field(100_000, ge=0, description="publishing rule: keys with held-back admissions kept at most (beyond it, new keys are published), and as many deferred keys; about 0.5 KB each")
    hold_defer: float = Field(0.1, ge=0, le=1, description="publishing rule: share of each rule's capacity one worker may publish late on one key once its allowance is spent, while far from the limit; 0 publishes such admissions at the next flush (docs/design.md, holding back)")
    hold_defer_seconds: float = Field(10.0, ge=0, allow_inf_nan=False, description="publishing rule: the longest a deferred admission waits before it is published")
    burst_cap: bool = Field(False, description="cap what one worker spends on a key before Kafka shows it: capacity/(2*(workers-1)) plus its refill share while unconfirmed; for round-robin balancing")
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC port of Envoy's rate limit service (v3 ShouldRateLimit) and the gRPC health service, bound on web_host; 0: off")
    rls_domain: str = Field("bucketstream", pattern=r"^[^\x00-\x1f\x7f]{1,256}$", description="the rate limit service's domain: a request for another domain is answered OK with no limit (as Envoy's ratelimit answers an unknown domain) and counted")
    rls_user_key: str = Field("user", pattern=r"^[^\x00-\x1f\x7f]{1,256}$", description="the descriptor entry key that names the user in rate limit service requests (the resource is the entry 'resource')")
    log_level: str = Field("info", pattern=r"^(?i:debug|info|warning|error|critical)$", description="log level")
    # -- Kafka security (bucketstream.kafka_auth turns these into every client's settings) ----
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512); required with SASL_*")
    kafka_username: str | None = Field(None, description="SASL user name; required with SASL_*")
    kafka_password: SecretStr | None = Field(None, description="SASL password (never logged); or use kafka_password_file")
    kafka_password_file: Path | None = Field(None, description="file holding the SASL password (a trailing newline is dropped)")
    kafka_ca_file: Path | None = Field(None, description="PEM file of the CA(s) that signed the brokers' certificates (default: the system's)")
    kafka_cert_file: Path | None = Field(None, description="PEM client certificate, for mutual TLS (with kafka_key_file)")
    kafka_key_file: Path | None = Field(None, description="PEM private key of kafka_cert_file (mutual TLS)")
    kafka_check_hostname: bool = Field(True, description="check that a broker's certificate names the host connected to (TLS)")
    admin_token: SecretStr | None = Field(None, description="bearer token GET /buckets, /stats and /metrics require (unset: open, for local use; /protected, /healthz and /readyz are always open)")

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

    @field_validator("rocksdb_memtable_mb", "rocksdb_block_cache_mb")
    @classmethod
    def _store_budget(cls, value: float) -> float:
        # below a MiB RocksDB would flush a memtable every few writes, or cache next to nothing
        if not math.isfinite(value) or (value != 0 and value < 1):
            raise ValueError(f"must be 0 (none shared) or at least 1 MiB, got {value!r}")
        return value

    @model_validator(mode="after")
    def _kafka_security(self) -> "Settings":
        """The security settings that only make sense together, checked together."""
        p = ENV_PREFIX
        sasl = self.kafka_security_protocol.startswith("SASL_")
        tls = self.kafka_security_protocol.endswith("SSL")
        problems = []
        if self.kafka_password is not None and self.kafka_password_file is not None:
            problems.append(f"{p}KAFKA_PASSWORD and {p}KAFKA_PASSWORD_FILE are both set: use one")
        elif self.kafka_password_file is not None:
            try:
                secret = self.kafka_password_file.read_text().removesuffix("\n").removesuffix("\r")
            except OSError as exc:
                problems.append(f"{p}KAFKA_PASSWORD_FILE: cannot read {str(self.kafka_password_file)!r}: {exc.strerror}")
            else:
                object.__setattr__(self, "kafka_password", SecretStr(secret))
        if sasl:
            for name in ("kafka_sasl_mechanism", "kafka_username", "kafka_password"):
                if getattr(self, name) in (None, ""):
                    problems.append(f"{p}{name.upper()}: required with {p}KAFKA_SECURITY_PROTOCOL="
                                    f"{self.kafka_security_protocol}")
        else:
            for name in ("kafka_sasl_mechanism", "kafka_username", "kafka_password"):
                if getattr(self, name) is not None:
                    problems.append(f"{p}{name.upper()} is set but {p}KAFKA_SECURITY_PROTOCOL is "
                                    f"{self.kafka_security_protocol}: use SASL_SSL (or SASL_PLAINTEXT)")
        for name in ("kafka_ca_file", "kafka_cert_file", "kafka_key_file"):
            path = getattr(self, name)
            if path is None:
                continue
            if not tls:
                problems.append(f"{p}{name.upper()} is set but {p}KAFKA_SECURITY_PROTOCOL is "
                                f"{self.kafka_security_protocol}: use SSL or SASL_SSL")
            elif not path.is_file():
                problems.append(f"{p}{name.upper()}: no such file {str(path)!r}")
        if (self.kafka_cert_file is None) != (self.kafka_key_file is None):
            problems.append(f"{p}KAFKA_CERT_FILE and {p}KAFKA_KEY_FILE go together (mutual TLS): set both or neither")
        if problems:
            raise ValueError("; ".join(problems))
        return self

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
            if not err["loc"]:  # a check of several settings: its message names them
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
            got = err.get("input")
            if name in SECRETS:
                got = None  # a secret is never echoed, not even a malformed one
            problems.append(f"{name}: {err['msg']}" + (f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""))
        raise ConfigError("bad configuration: " + "; ".join(problems)) from None
