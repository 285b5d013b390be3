"""How every Kafka client of the project connects: TLS and SASL from the settings, in one place.

``client_kwargs(settings)`` is what every aiokafka client the project makes
(producers, consumers, the admin client; worker, CLI and bench) passes on;
``faust_credentials(settings)`` is the same for Faust's own clients
(``broker_credentials``). ``tests/test_structure.py`` fails when a client is
built without ``client_kwargs``.

aiokafka's clients retry a broker they cannot log in to, or whose
certificate they refuse, and log each attempt: a worker with a wrong
password would never start and never stop. So ``preflight`` connects once,
with a short timeout, before anything else, and turns each failure into a
:class:`KafkaAccessError` whose one-line message names the setting to fix.
"""

from __future__ import annotations

import asyncio
import ssl

import faust
from aiokafka import errors
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from bucketstream.settings import ENV_PREFIX, ConfigError, Settings

P = ENV_PREFIX
PREFLIGHT_TIMEOUT = 10.0


class KafkaAccessError(ConfigError):
    """The brokers answered but this client may not use them as configured (TLS, SASL)."""


class KafkaUnreachable(ConfigError):
    """No bootstrap broker could be reached at all."""


def servers(settings: Settings) -> list[str]:
    return settings.broker.removeprefix("kafka://").split(";")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL (CA, client certificate, host name check); None otherwise."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    name = "KAFKA_CA_FILE"
    try:
        context = create_ssl_context(cafile=str(settings.kafka_ca_file) if settings.kafka_ca_file else None)
        if settings.kafka_cert_file is not None:
            name = "KAFKA_CERT_FILE / KAFKA_KEY_FILE"
            context.load_cert_chain(str(settings.kafka_cert_file), str(settings.kafka_key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{P}{name}: cannot load it as PEM: {exc}") from None
    context.check_hostname = settings.kafka_check_hostname
    return context


def client_kwargs(settings: Settings) -> dict:
    """The security arguments of an aiokafka producer, consumer or admin client."""
    kwargs: dict = {"bootstrap_servers": servers(settings),
                    "security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_username,
                      sasl_plain_password=settings.kafka_password.get_secret_value())
    return kwargs


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The same, as Faust's ``broker_credentials`` (its consumer, producer and topic admin)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    credentials = faust.SASLCredentials(username=settings.kafka_username,
                                        password=settings.kafka_password.get_secret_value(),
                                        ssl_context=ssl_context(settings), mechanism=settings.kafka_sasl_mechanism)
    credentials.protocol = faust.types.auth.AuthProtocol(protocol)  # SASL_PLAINTEXT without a context, SASL_SSL with
    return credentials


def explain(settings: Settings, where: str, exc: BaseException) -> ConfigError:
    """The one-line message of a failed connection, naming the setting to fix."""
    protocol = settings.kafka_security_protocol
    if isinstance(exc, ssl.SSLCertVerificationError):
        if "mismatch" in (exc.verify_message or ""):
            return KafkaAccessError(
                f"Kafka at {where}: its TLS certificate is not for this host name ({exc.verify_message}): "
                f"connect by a name the certificate holds ({P}BROKER) or set {P}KAFKA_CHECK_HOSTNAME=false")
        return KafkaAccessError(
            f"Kafka at {where}: its TLS certificate is not trusted ({exc.verify_message}): "
            f"set {P}KAFKA_CA_FILE to the CA that signed it")
    if isinstance(exc, ssl.SSLError):
        if "CERTIFICATE_REQUIRED" in str(exc).upper() or "BAD_CERTIFICATE" in str(exc).upper():
            return KafkaAccessError(f"Kafka at {where} refused this client's certificate ({exc.reason}): "
                                    f"set {P}KAFKA_CERT_FILE and {P}KAFKA_KEY_FILE (mutual TLS)")
        return KafkaAccessError(f"Kafka at {where} does not speak TLS there ({exc.reason}): "
                                f"check {P}KAFKA_SECURITY_PROTOCOL ({protocol}) against the listener")
    if isinstance(exc, errors.UnsupportedSaslMechanismError):
        return KafkaAccessError(f"Kafka at {where} does not offer SASL mechanism {settings.kafka_sasl_mechanism}: "
                                f"set {P}KAFKA_SASL_MECHANISM to one it offers")
    if isinstance(exc, errors.SaslAuthenticationFailed):
        return KafkaAccessError(f"Kafka at {where} refused user {settings.kafka_username!r} "
                                f"({settings.kafka_sasl_mechanism}): check {P}KAFKA_USERNAME and {P}KAFKA_PASSWORD")
    if isinstance(exc, (errors.IllegalSaslStateError, errors.UnsupportedVersionError)):
        return KafkaAccessError(f"Kafka at {where} does not take SASL there: "
                                f"check {P}KAFKA_SECURITY_PROTOCOL ({protocol}) against the listener")
    if isinstance(exc, ConnectionRefusedError) or (isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)
                                                   and "Connect call failed" in str(exc)):
        return KafkaUnreachable(f"cannot reach Kafka at {where} ({P}BROKER): {exc.strerror or exc}")
    if isinstance(exc, (errors.KafkaConnectionError, asyncio.TimeoutError, ConnectionError, EOFError)):
        # connected, but the broker closed or never answered the first request: a TLS listener
        # gets a plaintext request, or a SASL listener a request before the handshake
        return KafkaAccessError(f"Kafka at {where} closed the connection or did not answer: "
                                f"{P}KAFKA_SECURITY_PROTOCOL={protocol} is probably not what that listener speaks "
                                "(PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL)")
    if isinstance(exc, OSError):
        return KafkaUnreachable(f"cannot reach Kafka at {where} ({P}BROKER): {exc}")
    return KafkaAccessError(f"Kafka at {where}: {type(exc).__name__}: {exc}")


async def _try(settings: Settings, server: str, timeout: float) -> None:
    host, _, port = server.rpartition(":") if ":" in server else (server, "", "9092")
    # reachable at all? (a timeout later means the listener does not speak our protocol)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except asyncio.TimeoutError:
        raise KafkaUnreachable(f"cannot reach Kafka at {server} ({P}BROKER): no connection within {timeout:g} s") from None
    writer.close()
    kwargs = client_kwargs(settings)
    del kwargs["bootstrap_servers"]
    async def connect_and_ask() -> None:
        conn = await create_conn(host, int(port), client_id="bucketstream-preflight",
                                 request_timeout_ms=int(timeout * 1000), **kwargs)
        try:
            # a SASL listener answers ApiVersions before any login, and closes the
            # connection on anything else: ask for the broker list (no topics) too
            await conn.send(MetadataRequest([]))
        finally:
            conn.close()

    await asyncio.wait_for(connect_and_ask(), timeout)


async def preflight(settings: Settings, timeout: float = PREFLIGHT_TIMEOUT) -> None:
    """Connect once to the bootstrap brokers as every client will (TLS, SASL), within ``timeout``.

    Done when one of them lets this client in. Otherwise raises the most telling
    failure: :class:`KafkaAccessError` (TLS or SASL refused; takes precedence)
    or :class:`KafkaUnreachable`, each naming the setting to fix.
    """
    failures: list[ConfigError] = []
    for server in servers(settings):
        try:
            await _try(settings, server, timeout)
            return
        except ConfigError as exc:
            failures.append(exc)
        except (OSError, EOFError, asyncio.TimeoutError, errors.KafkaError) as exc:
            failures.append(explain(settings, server, exc))
    raise next((f for f in failures if isinstance(f, KafkaAccessError)), failures[0])
