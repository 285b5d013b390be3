"""The ``bucketstream`` command: run a worker, look at buckets.

A worker's options override the ``BUCKETSTREAM_*`` environment variables of
the same names; ``settings.load`` validates both in one place.

``inspect`` asks a worker about one bucket; ``table dump`` and ``table top``
read the table's compacted changelog straight from Kafka and need no worker.
The logic is in ``bucketstream.inspect``; this module parses and prints. Exit
codes: 0 done, 1 something did not answer (broker, worker, topic), 2 a usage
error or a request the worker refused (4xx).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time

import click

from bucketstream import spill
from bucketstream.settings import ENV_PREFIX, ConfigError, Settings, load

_FIELDS = Settings.model_fields


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _option(name: str, *decls: str, **kw):
    """A worker option documented from the Settings field, with its env var."""
    field = _FIELDS[name]
    default = field.default
    shown = f" [default: {default}]" if default not in (None, "") else ""
    return click.option(
        *decls,
        name,
        default=None,
        help=f"{field.description}{shown}",
        envvar=_env(name),
        show_envvar=True,
        **kw,
    )


def _kafka_security_options(f):
    """The Kafka TLS/SASL options (``bucketstream.kafka_auth``), shared by every command that talks to Kafka.
    The password is best given by file or environment: a command line is visible to every local user."""
    for decorator in reversed([
        _option("kafka_security_protocol", "--kafka-security-protocol", metavar="PROTOCOL"),
        _option("kafka_sasl_mechanism", "--kafka-sasl-mechanism", metavar="MECHANISM"),
        _option("kafka_username", "--kafka-username", metavar="NAME"),
        _option("kafka_password", "--kafka-password", metavar="SECRET"),
        _option("kafka_password_file", "--kafka-password-file", metavar="FILE"),
        _option("kafka_ca_file", "--kafka-ca-file", metavar="FILE"),
        _option("kafka_cert_file", "--kafka-cert-file", metavar="FILE"),
        _option("kafka_key_file", "--kafka-key-file", metavar="FILE"),
        _option("kafka_check_hostname", "--kafka-check-hostname/--no-kafka-check-hostname"),
    ]):
        f = decorator(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bucketstream")
def main() -> None:
    """bucketstream: a distributed rate limiter on Faust and Kafka.

    Every worker answers POST /protected (header X-User-ID) from its own
    replica of the bucket table; Kafka makes the workers agree.
    """


@main.command()
@_option("web_port", "--web-port", type=int)
@_option("broker", "--broker", metavar="URL")
@_option("data_dir", "--data-dir", metavar="DIR")
@_option("node_id", "--node-id", metavar="ID")
@_option("capacity", "--capacity", type=float, metavar="N")
@_option("rate", "--rate", type=float, metavar="R")
@_option("limits", "--limits", metavar="FILE")
@_option("burst_cap", "--burst-cap/--no-burst-cap")
@_option("hold_share", "--hold-share", type=float, metavar="SHARE")
@_option("hold_burst", "--hold-burst", type=float, metavar="SHARE")
@_option("hold_floor", "--hold-floor", type=float, metavar="SHARE")
@_option("hold_keys", "--hold-keys", type=int, metavar="N")
@_option("hold_defer", "--hold-defer", type=float, metavar="SHARE")
@_option("hold_defer_seconds", "--hold-defer-seconds", type=float, metavar="SECONDS")
@_option("web_host", "--web-host", metavar="ADDR")
@_option("grpc_port", "--grpc-port", type=int)
@_option("rls_domain", "--rls-domain", metavar="DOMAIN")
@_option("rls_user_key", "--rls-user-key", metavar="KEY")
@_option("partitions", "--partitions", type=int)
@_option("topic_replication", "--topic-replication", type=int)
@_option("flush_interval", "--flush-interval", type=float, metavar="SECONDS")
@_option("max_unconfirmed_keys", "--max-unconfirmed-keys", type=int, metavar="N")
@_option("cache_keys", "--cache-keys", type=int, metavar="N")
@_option("rocksdb_memtable_mb", "--rocksdb-memtable-mb", type=float, metavar="MIB")
@_option("rocksdb_block_cache_mb", "--rocksdb-block-cache-mb", type=float, metavar="MIB")
@_option("heap_trim_interval", "--heap-trim-interval", type=float, metavar="SECONDS")
@_option("heap_mmap_threshold_kb", "--heap-mmap-threshold-kb", type=int, metavar="KIB")
@_option("gc_young_threshold", "--gc-young-threshold", type=int, metavar="N")
@_option("expire_after", "--expire-after", type=float, metavar="SECONDS")
@_option("expire_check_interval", "--expire-check-interval", type=float, metavar="SECONDS")
@_option("app_id", "--app-id", metavar="NAME")
@_option("log_level", "--log-level", metavar="LEVEL")
@_option("admin_token", "--admin-token", metavar="TOKEN")
@_kafka_security_options
def worker(**options) -> None:
    """Run one Faust worker: the bucket table, its agents, the HTTP API and (with --grpc-port)
    Envoy's rate limit service over gRPC."""
    from bucketstream import kafka_auth, patches
    from bucketstream.app import create_app
    from bucketstream.topics import ensure_topics

    try:
        settings = load({name: value for name, value in options.items() if value is not None})
        app = create_app(settings)  # validates the rules and the libraries' internals; no I/O
        # one connection as every client will make it: a refused login or certificate stops
        # the start here, in one line naming the setting (aiokafka's clients would retry forever)
        asyncio.run(kafka_auth.preflight(settings))
        # topics first, so a cluster that cannot hold them is named here, not in a traceback
        asyncio.run(ensure_topics(settings))
        # states a stopped worker kept on this data directory: published before serving
        spill.read(spill.path_in(settings.data_dir))
    except (ConfigError, patches.PatchError) as exc:
        raise click.ClickException(str(exc)) from None
    except spill.SpillError as exc:
        raise click.ClickException(
            f"{exc}: it holds admissions the last worker on this data directory could not publish; "
            "move it away to start without them (they are then lost from the merged state)") from None

    from faust import Worker

    os.makedirs(settings.data_dir, exist_ok=True)
    w = Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    patches.no_spinner(w)
    w.execute_from_commandline()


# -- looking at buckets ---------------------------------------------------------------------

def _json_flag(f):
    return click.option("--json", "as_json", is_flag=True, help="print one JSON document (for scripts)")(f)


def _fail(exc: Exception, code: int = 1) -> click.ClickException:
    """A one-line ``Error: ...`` on stderr and exit ``code``."""
    err = click.ClickException(str(exc))
    err.exit_code = code
    return err


def _echo_json(doc: dict) -> None:
    click.echo(json.dumps(doc, indent=2, allow_nan=False, default=str))


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "?"
    return f"{x:.{digits}f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@main.command("inspect")
@click.argument("user")
@click.option("--resource", "-r", metavar="NAME", help="the resource of POST /protected/NAME [default: none, "
              "the bucket of POST /protected]")
@click.option("--worker", "worker_url", metavar="URL", default="http://127.0.0.1:6066", show_default=True,
              envvar="BUCKETSTREAM_WORKER_URL", show_envvar=True, help="the worker to ask")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="SECONDS", help="give up on the worker after this long")
@click.option("--limit", "-l", metavar="NAME", help="for a rule with several limits: which one "
              "(e.g. day) [default: the first]")
@_json_flag
def inspect_command(user: str, resource: str | None, worker_url: str, timeout: float, as_json: bool,
                    limit: str | None = None) -> None:
    """Show one bucket as a worker sees it: tokens now, consumption per node, role.

    USER is the X-User-ID, or a whole bucket key as `table dump` prints it
    (VERSION|RESOURCE|USER). Exit 1 if the worker does not answer, 2 if it
    refuses the request (unknown resource, bad user id).
    """
    from bucketstream import inspect as look

    key = look.split_key(user) if resource is None else None
    if key is not None:
        user, resource = key
    try:
        view = look.fetch_bucket(worker_url, user, resource, timeout, limit)
    except look.InspectError as exc:
        raise _fail(exc, exc.exit_code) from None
    if as_json:
        _echo_json(view)
    else:
        try:
            click.echo(_bucket_text(view))
        except (KeyError, TypeError) as exc:
            raise _fail(f"worker {worker_url} answered without a usable {exc} field: is it another "
                        "version of bucketstream? (--json shows the raw answer)") from None
    asked = click.get_current_context().params["user"]
    if key is not None and view.get("key") != asked:
        click.echo(f"note: the worker's current rule keeps this bucket under {view.get('key')}, not {asked} "
                   "(the rule changed: the old bucket is no longer read)", err=True)


def _bucket_text(v: dict) -> str:
    """The worker's ``GET /buckets`` answer, for a person."""
    from bucketstream import crdt

    capacity, rate, tokens = v["capacity"], v["rate"], v["tokens"]
    where = f"resource {v['resource']}" if v.get("resource") else "no resource"
    shadow = ", shadow: never refuses" if v.get("shadow") else ""
    if tokens >= capacity:
        fill = "full"
    elif tokens < 0:
        fill = f"in debt, full in {_num((capacity - tokens) / rate, 1)} s"
    else:
        fill = f"full in {_num((capacity - tokens) / rate, 1)} s"
    lines = [
        f"bucket    {v['key']}",
        f"          user {v['user']}, {where}, policy {v['policy']}{shadow}"
        + (f"; limits {', '.join(v['limits'])} (--limit)" if len(v.get("limits") or ()) > 1 else ""),
        f"tokens    {_num(tokens)} of {_num(capacity)} now ({fill}); refill {_num(rate, 3)}/s",
    ]
    counters = v.get("counters") or {}
    lines.append(f"consumed  {v['consumed']} token(s) since the rule's epoch, by {len(counters)} node(s)")
    for node, count in sorted(counters.items(), key=lambda kv: (-kv[1], kv[0])):
        mine = "  (this worker)" if str(v.get("slot")) == node else ""
        lines.append(f"          node {node:>20}  {count}{mine}")
    try:
        wasted = v["wasted"] / crdt.Rule(capacity, rate).scale
    except ValueError:  # not a rule the core accepts: show the raw register
        lines.append(f"wasted    {v['wasted']} units of refill")
    else:
        lines.append(f"wasted    {_num(wasted)} token(s) of refill since the rule's epoch (while full)")
    behind = v["consumed"] - v.get("replica_consumed", v["consumed"])
    table = "table replica has it all" if behind <= 0 else f"table replica is {behind} token(s) behind"
    own = "; own spending not in the table yet" if v.get("own_unreflected") else ""
    lines.append(f"replica   {table}{own}")
    ready = "ready" if v.get("ready") else "NOT ready (recovering)"
    lines.append(f"worker    {v['worker']}: partition {v['partition']} {v['role']}, {ready}")
    return "\n".join(lines)


@main.group()
def table() -> None:
    """Read the bucket table straight from Kafka (no worker needed).

    The table is the compacted changelog topic <app id>-buckets-changelog,
    read from the beginning to its end offsets at start. Tokens are computed
    now, under the rules given by --capacity/--rate or --limits (the
    workers' settings); buckets of other rule versions show '?'.
    """


def _table_options(f):
    for decorator in reversed([
        _option("broker", "--broker", metavar="URL"),
        _option("app_id", "--app-id", metavar="NAME"),
        _option("capacity", "--capacity", type=float, metavar="N"),
        _option("rate", "--rate", type=float, metavar="R"),
        _option("limits", "--limits", metavar="FILE"),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
                     metavar="SECONDS", help="give up on Kafka after this long"),
        _json_flag,
        _kafka_security_options,
    ]):
        f = decorator(f)
    return f


def _read_table(options: dict, timeout: float):
    from bucketstream import inspect as look
    from bucketstream.rules import Rules
    from bucketstream import kafka_auth
    from bucketstream.topics import changelog_topic

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its connection errors become our one line
    try:
        settings = load({name: value for name, value in options.items() if value is not None})
        rules = Rules.from_settings(settings.capacity, settings.rate, settings.limits)
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    try:
        # one connection first: a refused login or certificate is one line naming the setting, not a hang
        asyncio.run(kafka_auth.preflight(settings, min(timeout, kafka_auth.PREFLIGHT_TIMEOUT)))
    except kafka_auth.KafkaUnreachable as exc:
        raise _fail(exc, 1) from None
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    try:
        snapshot = asyncio.run(look.read_changelog(kafka_auth.client_kwargs(settings), changelog_topic(settings),
                                                   settings.app_id, timeout))
    except look.InspectError as exc:
        raise _fail(exc, exc.exit_code) from None
    return settings, look.table(snapshot, rules, time.time())


def _table_json(settings, t, rows, **extra) -> dict:
    return {
        "topic": t.snapshot.topic, "app_id": settings.app_id, "partitions": t.snapshot.partitions, "at": t.now,
        **extra, "total": len(t.rows), "buckets": [r.to_json() for r in rows],
        "malformed": [m.to_json() for m in t.malformed],
    }


def _rows_text(rows, now: float) -> list[str]:
    from bucketstream.inspect import display

    header = ("KEY", "POLICY", "CONSUMED", "TOKENS", "NODES", "PARTITION", "UPDATED")
    cells = [header] + [
        (display(r.key), r.policy or "?", str(r.state.consumed),
         "?" if r.tokens is None else f"{r.tokens:.2f}/{_num(r.capacity)}",
         str(len(r.state.counters)), str(r.record.partition), _age(now - r.record.timestamp))
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    left = {0, 1}
    return ["  ".join(c[i].ljust(widths[i]) if i in left else c[i].rjust(widths[i]) for i in range(len(header)))
            .rstrip() for c in cells]


def _table_text(t, rows, what: str) -> None:
    snap = t.snapshot
    if not t.rows and not t.malformed:
        click.echo(f"no buckets in {snap.topic} ({snap.partitions} partitions)")
        return
    if rows:
        for line in _rows_text(rows, t.now):
            click.echo(line)
    click.echo(f"{what} of {len(t.rows)} bucket(s) in {snap.topic} ({snap.partitions} partitions, "
               "read up to the end offsets at start)")
    if t.unknown_rules:
        click.echo(f"{t.unknown_rules} bucket(s) were made under rules not given here (tokens '?'): "
                   "pass the workers' --capacity/--rate or --limits")
    if t.malformed:
        click.echo(f"{len(t.malformed)} malformed value(s), not bucket states:")
        for m in t.malformed:
            click.echo(f"  {m.key!r} partition {m.record.partition} offset {m.record.offset}: {m.error}")


@table.command("dump")
@click.option("--limit", "-n", type=click.IntRange(min=0), default=None, metavar="N",
              help="show at most N buckets (sorted by key) [default: all]")
@_table_options
def table_dump(limit: int | None, timeout: float, as_json: bool, **options) -> None:
    """Every bucket in the table: key, consumption, tokens now, nodes.

    Malformed values are listed, not fatal. Works with no worker running.
    """
    settings, t = _read_table(options, timeout)
    rows = t.rows if limit is None else t.rows[:limit]
    if as_json:
        _echo_json(_table_json(settings, t, rows))
    else:
        _table_text(t, rows, f"{len(rows)}")


@table.command("top")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=10, show_default=True, metavar="N",
              help="show the first N buckets")
@click.option("--by", type=click.Choice(["consumed", "tokens"]), default="consumed", show_default=True,
              help="rank by most tokens consumed, or by fewest tokens left now")
@_table_options
def table_top(limit: int, by: str, timeout: float, as_json: bool, **options) -> None:
    """The buckets that consumed the most (or have the fewest tokens now).

    Works with no worker running.
    """
    from bucketstream.inspect import top

    settings, t = _read_table(options, timeout)
    rows = top(t.rows, limit, by)
    if as_json:
        _echo_json(_table_json(settings, t, rows, by=by))
    else:
        _table_text(t, rows, f"top {len(rows)} by {by}")


def run() -> None:  # pragma: no cover - console entry point alias
    main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
