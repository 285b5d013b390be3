"""The ``bucketstream`` command: run a worker, look at buckets.

Options only set ``BUCKETSTREAM_*`` environment variables; ``settings.load``
validates them all in one place, so ``faust -A bucketstream.app worker`` with
the same variables behaves the same.
"""

from __future__ import annotations

import os
import sys

import click

from bucketstream.settings import ENV_PREFIX, ConfigError, Settings

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
@_option("web_host", "--web-host", metavar="ADDR")
@_option("partitions", "--partitions", type=int)
@_option("topic_replication", "--topic-replication", type=int)
@_option("flush_interval", "--flush-interval", type=float, metavar="SECONDS")
@_option("expire_after", "--expire-after", type=float, metavar="SECONDS")
@_option("expire_check_interval", "--expire-check-interval", type=float, metavar="SECONDS")
@_option("app_id", "--app-id", metavar="NAME")
@_option("log_level", "--log-level", metavar="LEVEL")
def worker(**options) -> None:
    """Run one Faust worker: the bucket table, its agents and the HTTP API."""
    for name, value in options.items():
        if value is not None:
            os.environ[_env(name)] = str(value)
    try:
        from bucketstream.app import app, settings
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    from faust import Worker

    os.makedirs(settings.data_dir, exist_ok=True)
    Worker(app, loglevel=settings.log_level.upper(), quiet=True).execute_from_commandline()


def run() -> None:  # pragma: no cover - console entry point alias
    main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
