"""Rules: which token bucket a request draws from, and with what limits.

A limits file (TOML) holds a default rule, per-resource rules and tiers of
per-user overrides::

    [default]                # POST /protected, and resources without a rule
    capacity = 10
    rate = 1                 # tokens per second

    [resources.search]       # POST /protected/search
    capacity = 20
    rate = 5

    [resources.upload]
    capacity = 2
    rate = 0.1
    shadow = true            # decide and count, but never refuse

    [tiers.gold]             # a tier replaces the default for its users ...
    capacity = 100
    rate = 10
    [tiers.gold.resources.search]   # ... and may have its own resource rules
    capacity = 200
    rate = 50

    [users]
    alice = "gold"

Without a file, the default rule comes from ``--capacity``/``--rate``.
Validation happens at start-up; an error names the file, the key and the
problem. ``strict_resources = true`` at top level answers 404 for resources
the file does not name (otherwise they use the default rule, each with its
own bucket).

Bucket keys are text: ``<version>|<resource>|<user>``. ``version`` is a
fingerprint of the rule's capacity and rate, so a state is never read
against other parameters.

Changing a rule never hands out a fresh burst: the workers keep a history of
each rule's versions in Kafka (``bucketstream.history``), and a bucket of the
new version that does not exist yet starts from the level of the same user's
bucket under the previous version (``crdt.carry_over``): what it held, capped
at the new capacity, refilling at the new rate. Old-version buckets stay
readable until they have been full long enough to expire.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bucketstream.crdt import Rule
from bucketstream.settings import ConfigError

#: How many versions of each rule the history keeps.
HISTORY_LENGTH = 8

RESOURCE_RE = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
DEFAULT_POLICY = "default"


class _RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capacity: Annotated[float, Field(gt=0)]
    rate: Annotated[float, Field(gt=0)]
    shadow: bool = False

    @field_validator("capacity", "rate")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class _TierSpec(_RuleSpec):
    resources: dict[str, _RuleSpec] = {}


class _LimitsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strict_resources: bool = False
    default: _RuleSpec | None = None
    resources: dict[str, _RuleSpec] = {}
    tiers: dict[str, _TierSpec] = {}
    users: dict[str, str] = {}

    @model_validator(mode="after")
    def _names(self) -> "_LimitsFile":
        names = list(self.resources) + [r for t in self.tiers.values() for r in t.resources]
        for name in names:
            if not RESOURCE_RE.match(name):
                raise ValueError(f"resource name {name!r} must match {RESOURCE_RE.pattern}")
        for user, tier in self.users.items():
            if tier not in self.tiers:
                raise ValueError(f"users.{user} names tier {tier!r}, which is not defined under [tiers]")
        return self


@dataclass(frozen=True, slots=True)
class Policy:
    """One rule as requests see it: its limits, its name, and its key prefix."""

    name: str  # "default", "search", "gold", "gold/search": for headers and metrics
    rule: Rule
    shadow: bool
    version: str  # fingerprint of capacity and rate

    @classmethod
    def build(cls, name: str, capacity: float, rate: float, shadow: bool = False) -> "Policy":
        rule = Rule(capacity, rate)
        digest = hashlib.blake2s(f"{rule.capacity!r}/{rule.rate!r}/{rule.epoch!r}".encode(), digest_size=4)
        return cls(name, rule, shadow, digest.hexdigest())


class UnknownResource(LookupError):
    pass


def recorded_until(versions: list[dict], version: str) -> float | None:
    """When ``version`` was replaced, from a policy's recorded versions."""
    for entry in versions:
        if entry.get("version") == version:
            until = entry.get("until")
            return float(until) if isinstance(until, (int, float)) else None
    return None


class Rules:
    """Resolves (user, resource) to a Policy and a bucket key. Pure, no I/O after loading."""

    def __init__(self, default: Policy, resources: dict[str, Policy] | None = None,
                 tiers: dict[str, tuple[Policy, dict[str, Policy]]] | None = None,
                 users: dict[str, str] | None = None, strict_resources: bool = False) -> None:
        self.default = default
        self.resources = resources or {}
        self.tiers = tiers or {}
        self.users = users or {}
        self.strict_resources = strict_resources
        self.by_version: dict[str, Policy] = {}
        for p in self.all_policies():
            self.by_version.setdefault(p.version, p)
        # (policy name, version) -> (the version before it, when it was replaced)
        self._previous: dict[tuple[str, str], tuple[Policy, float]] = {}
        self._next: dict[str, Policy] = {}  # an earlier version -> the version that replaced it

    def all_policies(self) -> list[Policy]:
        out = [self.default, *self.resources.values()]
        for tier, per_resource in self.tiers.values():
            out += [tier, *per_resource.values()]
        return out

    def policy(self, user: str, resource: str | None) -> Policy:
        tier_name = self.users.get(user)
        if tier_name is not None:
            tier, per_resource = self.tiers[tier_name]
            if resource is None:
                return tier
            found = per_resource.get(resource)
            if found is not None:
                return found
            if resource in self.resources or not self.strict_resources:
                return tier
            raise UnknownResource(resource)
        if resource is None:
            return self.default
        found = self.resources.get(resource)
        if found is not None:
            return found
        if self.strict_resources:
            raise UnknownResource(resource)
        return self.default

    @staticmethod
    def key(policy: Policy, user: str, resource: str | None) -> bytes:
        return f"{policy.version}|{resource or ''}|{user}".encode("utf-8", "surrogateescape")

    @staticmethod
    def parse_key(key: bytes) -> tuple[str, str | None, str]:
        """(version, resource or None, user) of a bucket key; ValueError if it is not one."""
        text = key.decode("utf-8", "surrogateescape")
        version, resource, user = text.split("|", 2)
        return version, resource or None, user

    def policy_for_key(self, key: bytes) -> Policy | None:
        """The policy a stored key was made under, or None if no current rule has that version."""
        try:
            version, _, _ = self.parse_key(key)
        except ValueError:
            return None
        return self.by_version.get(version)

    # -- rule history ----------------------------------------------------------------
    def versions_to_record(self, recorded: dict[str, list[dict]], now: float) -> dict[str, list[dict]]:
        """The history entries to write: for each policy whose current version is not
        the latest recorded one, its versions with this one appended (and the one it
        replaces marked ``until`` now). ``recorded``: policy name -> versions, oldest first."""
        out: dict[str, list[dict]] = {}
        for p in self.all_policies():
            versions = list(recorded.get(p.name, []))
            if versions and versions[-1].get("version") == p.version:
                continue
            versions = [v for v in versions if v.get("version") != p.version]  # a rollback moves it to the end
            if versions:
                versions[-1] = {**versions[-1], "until": versions[-1].get("until") or now}
            versions.append({"version": p.version, "capacity": p.rule.capacity, "rate": p.rule.rate,
                             "until": None})
            out[p.name] = versions[-HISTORY_LENGTH:]
        return out

    def adopt_history(self, recorded: dict[str, list[dict]]) -> None:
        """Learn the earlier versions of the current rules (entries that do not
        rebuild to their recorded version are ignored)."""
        for p in self.all_policies():
            older: Policy | None = None
            for entry in recorded.get(p.name, []):
                try:
                    policy = Policy.build(p.name, entry["capacity"], entry["rate"], p.shadow)
                except (KeyError, TypeError, ValueError):
                    older = None
                    continue
                if policy.version != entry.get("version"):
                    older = None
                    continue
                if older is not None and entry.get("version") != older.version:
                    until = recorded_until(recorded[p.name], older.version)
                    if until is not None:
                        self._previous[(p.name, policy.version)] = (older, until)
                        self._next[older.version] = policy
                self.by_version.setdefault(policy.version, policy)  # old buckets expire by their own rule
                older = policy

    def predecessor(self, key: bytes) -> tuple[bytes, Policy, Policy, float] | None:
        """For a bucket key: the key of the same bucket under the rule's previous
        version, that version's policy, the key's own policy, and when the previous
        version was replaced; None if the rule has no recorded previous version."""
        if not self._previous:
            return None
        try:
            version, resource, user = self.parse_key(key)
            name = self.policy(user, resource).name
        except (ValueError, UnknownResource):
            return None
        found = self._previous.get((name, version))
        if found is None:
            return None
        older, until = found
        return self.key(older, user, resource), older, self.by_version[version], until

    def successor(self, key: bytes) -> tuple[bytes, Policy, Policy] | None:
        """For a bucket key of an earlier rule version: the key of the same bucket under
        the version that replaced it, the earlier policy and the newer one; else None."""
        if not self._next:
            return None
        try:
            version, resource, user = self.parse_key(key)
        except ValueError:
            return None
        newer = self._next.get(version)
        if newer is None:
            return None
        return self.key(newer, user, resource), self.by_version[version], newer

    # -- loading -------------------------------------------------------------------
    @classmethod
    def from_settings(cls, capacity: float, rate: float, limits: Path | None) -> "Rules":
        if limits is None:
            return cls(Policy.build(DEFAULT_POLICY, capacity, rate))
        return cls.load(limits, fallback=(capacity, rate))

    @classmethod
    def load(cls, path: Path, fallback: tuple[float, float] = (10.0, 1.0)) -> "Rules":
        where = f"limits file {path} (BUCKETSTREAM_LIMITS)"
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from None
        try:
            spec = _LimitsFile.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'top level'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"{where}: {problems}") from None
        d = spec.default
        default = Policy.build(DEFAULT_POLICY, *(fallback if d is None else (d.capacity, d.rate)),
                               shadow=bool(d and d.shadow))
        resources = {n: Policy.build(n, r.capacity, r.rate, r.shadow) for n, r in spec.resources.items()}
        tiers = {
            n: (Policy.build(n, t.capacity, t.rate, t.shadow),
                {r: Policy.build(f"{n}/{r}", s.capacity, s.rate, s.shadow) for r, s in t.resources.items()})
            for n, t in spec.tiers.items()
        }
        return cls(default, resources, tiers, dict(spec.users), spec.strict_resources)
