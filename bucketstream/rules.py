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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bucketstream.crdt import Rule
from bucketstream.settings import ConfigError

#: How many versions of each rule the history keeps.
HISTORY_LENGTH = 8

RESOURCE_RE = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
DEFAULT_POLICY = "default"


LIMIT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


#: a capacity or a rate: a finite number above 0
Positive = Annotated[float, Field(gt=0), AfterValidator(_finite)]


class _LimitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    capacity: Positive
    rate: Positive
    shadow: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not LIMIT_NAME_RE.match(v):
            raise ValueError(f"limit name {v!r} must match {LIMIT_NAME_RE.pattern}")
        return v


class _RuleSpec(BaseModel):
    """One limit (``capacity``, ``rate``) or a list of named ``limits``, all of which must admit."""

    model_config = ConfigDict(extra="forbid")
    capacity: Positive
    rate: Positive
    shadow: bool = False
    limits: list[_LimitSpec] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_or_a_list(cls, data: object) -> object:
        # capacity and rate stay required fields (so a missing one is named by its
        # path, e.g. resources.search.rate); a list of limits stands in for them
        if isinstance(data, dict) and "limits" in data:
            if {"capacity", "rate", "shadow"} & data.keys():
                raise ValueError("give capacity and rate, or a list of limits (each with its own shadow), not both")
            return {**data, "capacity": 1, "rate": 1}  # unused: build() reads the limits
        return data

    @field_validator("limits")
    @classmethod
    def _named_once(cls, limits: list[_LimitSpec] | None) -> list[_LimitSpec] | None:
        if limits is not None:
            if not limits:
                raise ValueError("limits must not be empty")
            names = [limit.name for limit in limits]
            if len(set(names)) != len(names):
                raise ValueError(f"limit names must be distinct, got {names}")
        return limits

    def build(self, name: str) -> "Policy":
        """The policy: its first limit, carrying the others in ``also``."""
        if self.limits is None:
            return Policy.build(name, self.capacity, self.rate, self.shadow)
        first, *others = [Policy.build(f"{name}:{limit.name}", limit.capacity, limit.rate, limit.shadow,
                                       named=True) for limit in self.limits]
        return first.with_also(tuple(others))


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
    """One rule as requests see it: its limits, its name, and its key prefix.

    A rule with several limits is its first limit, with the others in ``also``
    (empty for the usual single limit): each limit is a Policy of its own, with
    its own bucket key, history and shadow flag, named ``<rule>:<limit>``.
    """

    name: str  # "default", "search", "gold", "gold/search", "default:day": for headers and metrics
    rule: Rule
    shadow: bool
    version: str  # fingerprint of capacity and rate (and of the name, for a limit in a list)
    also: tuple["Policy", ...] = ()  # the rule's other limits, all of which must admit too
    named: bool = False  # a limit in a list: its fingerprint includes its name

    @classmethod
    def build(cls, name: str, capacity: float, rate: float, shadow: bool = False, named: bool = False) -> "Policy":
        """``named``: the fingerprint includes the name (limits in a list: two limits of one
        rule with the same capacity and rate must still be two buckets)."""
        rule = Rule(capacity, rate)
        text = f"{rule.capacity!r}/{rule.rate!r}/{rule.epoch!r}"
        digest = hashlib.blake2s((f"{name}:{text}" if named else text).encode(), digest_size=4)
        return cls(name, rule, shadow, digest.hexdigest(), (), named)

    def with_also(self, also: tuple["Policy", ...]) -> "Policy":
        return Policy(self.name, self.rule, self.shadow, self.version, also, self.named)

    @property
    def limits(self) -> tuple["Policy", ...]:
        """Every limit of the rule, this one first."""
        return (self, *self.also)


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
        """Every limit of every rule (a rule with several limits gives each)."""
        out = [self.default, *self.resources.values()]
        for tier, per_resource in self.tiers.values():
            out += [tier, *per_resource.values()]
        return [limit for p in out for limit in p.limits]

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
                    policy = Policy.build(p.name, entry["capacity"], entry["rate"], p.shadow, p.named)
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
            policy = self.policy(user, resource)
        except (ValueError, UnknownResource):
            return None
        # the limit of the user's rule this key is a bucket of (the rule itself, usually)
        name = next((p.name for p in policy.also if p.version == version), policy.name)
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
        default = Policy.build(DEFAULT_POLICY, *fallback) if d is None else d.build(DEFAULT_POLICY)
        resources = {n: r.build(n) for n, r in spec.resources.items()}
        tiers = {
            n: (t.build(n), {r: s.build(f"{n}/{r}") for r, s in t.resources.items()})
            for n, t in spec.tiers.items()
        }
        return cls(default, resources, tiers, dict(spec.users), spec.strict_resources)
