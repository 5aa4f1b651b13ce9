"""Forwarding: every event, as it is written, to the tools a security team already runs.

A destination is a URL (:func:`destination`):

- ``syslog+tcp://HOST:PORT`` and ``syslog+tls://HOST:PORT``: RFC 5424 messages with
  octet-counted framing (RFC 6587, RFC 5425), the message an ECS JSON document;
- ``splunk-hec://HOST:PORT`` (HTTPS) and ``splunk-hec+http://HOST:PORT``: Splunk's HTTP Event
  Collector, the token read from an environment variable, never from the URL;
- ``otlp+http://HOST:PORT`` and ``otlp+https://HOST:PORT``: OpenTelemetry logs over OTLP/HTTP,
  through the official ``opentelemetry-sdk`` exporter (the ``forward`` extra).

Every event is mapped once to Elastic Common Schema names (:func:`ecs_event`); each format
carries that document its own way.

Delivery is at least once. A destination's cursor (the ``seq`` of the last event its receiver
accepted) is kept in the store and moves only after the receiver accepted a whole batch, so a
restart resumes where it stopped and a receiver that is down loses nothing. A batch that was
sent but not acknowledged when the sender died or the connection broke is sent again: the
receiver may hold it twice, and ``event.id`` tells the copies apart. The cursor's row is also
a lease, so one forwarder at a time sends to a destination however many app instances carry
the option.

Syslog over TCP has no acknowledgement of its own, so each batch goes over a connection of its
own that the forwarder half-closes; the batch counts as accepted when the receiver, having read
to the end, closes its side too.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import sqlalchemy as sa

from collector import __version__
from collector import events as ev
from collector.errors import ConfigurationError, ConnectAuditError, StoreUnavailable
from collector.models import AuditEvent, ForwardCursor

log = logging.getLogger("connect_audit.forward")

SCHEMES = ("syslog+tcp", "syslog+tls", "splunk-hec", "splunk-hec+http", "otlp+http", "otlp+https")
#: The ECS version whose field names :func:`ecs_event` uses.
ECS_VERSION = "8.17.0"
#: Where the Splunk HEC token is read from unless the URL names another variable (token_env=).
SPLUNK_TOKEN_ENV = "CONNECT_AUDIT_SPLUNK_HEC_TOKEN"  # noqa: S105 (a variable's name)
#: RFC 5424 facility names (section 6.2.1) accepted by ``facility=``.
FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "audit": 13,
    "alert": 14,
    "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
DEFAULT_FACILITY = "audit"  # RFC 5424's "log audit": what this log is
BATCH_SIZE = 500
LEASE_SECONDS = 30.0
STARTS = ("beginning", "now")


class ForwardError(ConnectAuditError):
    """Raised when a destination cannot be reached or does not accept a batch."""


class LeaseLost(ForwardError):
    """Raised when another forwarder took over a destination's lease while this one sent."""


# --------------------------------------------------------------------------- the ECS document

_OUTCOME = {ev.ALLOWED: "success", ev.DENIED: "failure", ev.REJECTED: "failure", ev.ERROR: "failure"}
_CATEGORY = {
    ev.OUTGOING: ["api"],
    ev.INCOMING: ["authentication", "web"],
    ev.LIFECYCLE: ["configuration"],
    ev.INTERNAL: ["configuration"],
}
#: (syslog severity, OpenTelemetry severity number, text) per outcome: a refusal is a warning,
#: a failure to reach the product an error; anything else informational.
_SEVERITY = {ev.DENIED: (4, 13, "WARN"), ev.REJECTED: (4, 13, "WARN"), ev.ERROR: (3, 17, "ERROR")}
_INFO = (6, 9, "INFO")


def _event_types(row: Mapping[str, Any]) -> list[str]:
    if row["direction"] == ev.OUTGOING:
        return ["access", "allowed" if row["outcome"] == ev.ALLOWED else "denied"]
    if row["direction"] == ev.INCOMING:
        return ["info"]
    return ["change"] if row["direction"] == ev.LIFECYCLE else ["info"]


def _message(row: Mapping[str, Any]) -> str:
    kind = row["event_type"]
    parts = [kind] if kind.startswith(row["direction"]) else [row["direction"], kind]
    if row["method"]:
        parts.append(f"{row['method']} {row['path'] or ''}".strip())
    if row["status"] is not None:
        parts.append(str(row["status"]))
    parts.append(row["outcome"] + (f" ({row['reason']})" if row["reason"] else ""))
    if row["tenant_base_url"]:
        parts.append(f"on {row['tenant_base_url']}")
    return " ".join(parts)


def _prune(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without its empty values (None, "", empty objects), at every level."""
    out = {}
    for key, value in doc.items():
        if type(value) is dict:
            value = _prune(value)
            if value:
                out[key] = value
        elif value is not None and value != "":
            out[key] = value
    return out


def ecs_event(row: Mapping[str, Any]) -> dict[str, Any]:
    """One stored event as an Elastic Common Schema document (nested objects).

    ECS names where ECS has the concept; the rest under ``connect_audit``. A column without a
    value is left out rather than sent as null. The event's chain hash is ``event.hash`` and
    its place in the chain ``event.sequence``, so a SIEM holds what ``connect-audit verify``
    checks; ``claims`` and ``extra`` are the stored objects as they are.
    """
    latency, base = row["latency_ms"], row["tenant_base_url"]
    doc = _prune(
        {
            "@timestamp": row["ts"].astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "message": _message(row),
            "ecs": {"version": ECS_VERSION},
            "event": {
                "id": row["event_id"],
                "kind": "event",
                "module": "connect_audit",
                "dataset": "connect_audit.audit",
                "action": row["event_type"],
                "category": _CATEGORY.get(row["direction"], ["configuration"]),
                "type": _event_types(row),
                "outcome": _OUTCOME.get(row["outcome"], "unknown"),
                "reason": row["reason"],
                "duration": None if latency is None else int(latency * 1_000_000),
                "sequence": row["seq"],
                "hash": row["hash"],
            },
            "http": {
                "request": {"method": row["method"], "id": row["request_id"]},
                "response": {"status_code": row["status"]},
            },
            "url": {"path": row["path"], "domain": urlsplit(base).hostname if base else None},
            "user": {"id": row["account_id"]},
            "organization": {"id": row["tenant_client_key"]},
            "service": {
                "name": "connect-audit",
                "version": __version__,
                "node": {"name": row["instance_id"]},
            },
            "connect_audit": {
                "direction": row["direction"],
                "platform": row["platform"],
                "auth_method": row["auth_method"],
                "identity_kind": row["identity_kind"],
                "outcome": row["outcome"],
                "tenant": {"client_key": row["tenant_client_key"], "base_url": base},
                "product": row["product"],
                "path_template": row["path_template"],
                "scope": {"required": row["required_scope"], "declared": row["declared_scopes"]},
                "detail": row["detail"],
                "token_fingerprint": row["token_fingerprint"],
                "prev_hash": row["prev_hash"],
            },
        }
    )
    for column in ("claims", "extra"):  # as stored, not pruned: they are the record's own objects
        if row[column]:
            doc["connect_audit"][column] = json.loads(row[column])
    return doc


def severity(doc: Mapping[str, Any]) -> tuple[int, int, str]:
    """(syslog severity, OpenTelemetry severity number, severity text) of a document."""
    return _SEVERITY.get(doc["connect_audit"]["outcome"], _INFO)


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for formats whose attributes are flat (OpenTelemetry); objects inside
    ``claims`` and ``extra`` become JSON text rather than an unbounded set of keys."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if name in ("connect_audit.claims", "connect_audit.extra"):
            out[name] = json.dumps(value, sort_keys=True, separators=(",", ":"))
        elif isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------- destinations


class Target(Protocol):
    """Where a forwarder sends: ``send`` returns once the receiver accepted the whole batch."""

    label: str

    def send(self, docs: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Parsed:
    scheme: str
    host: str
    port: int | None
    path: str
    params: dict[str, str]
    url: str


def _parse(url: str) -> _Parsed:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"cannot forward to {_shown(url)!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in SCHEMES)}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "a forwarding URL must not carry credentials (they would show in process lists and logs); "
            f"give the Splunk token in {SPLUNK_TOKEN_ENV} and OTLP headers in OTEL_EXPORTER_OTLP_HEADERS"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"cannot forward to {_shown(url)!r}: {exc}") from None
    if not parts.hostname:
        raise ConfigurationError(f"cannot forward to {_shown(url)!r}: the URL names no host")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return _Parsed(scheme, parts.hostname, port, parts.path, params, url.strip())


def _shown(url: str) -> str:
    """A URL as it may be shown: without anything between ``://`` and ``@``."""
    head, sep, tail = url.partition("://")
    return head + sep + tail.split("@", 1)[-1] if sep else url


def _known(p: _Parsed, allowed: Iterable[str]) -> None:
    unknown = sorted(set(p.params) - set(allowed))
    if unknown:
        raise ConfigurationError(
            f"cannot forward to {p.url!r}: unknown parameter {unknown[0]!r} "
            f"(allowed for {p.scheme}: {', '.join(sorted(allowed)) or 'none'})"
        )


def _timeout(p: _Parsed) -> float:
    try:
        value = float(p.params.get("timeout", "10"))
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigurationError(
            f"cannot forward to {p.url!r}: timeout= must be a positive number of seconds"
        )
    return value


def _ca_file(p: _Parsed) -> str | None:
    """The ``ca=`` file the receiver's certificate is checked against (None: the system's)."""
    ca = p.params.get("ca")
    if ca and not os.path.isfile(ca):
        raise ConfigurationError(f"cannot forward to {p.url!r}: the CA file {ca!r} does not exist")
    return ca or None


def _tls_context(p: _Parsed) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=_ca_file(p))


def destination(url: str, *, env: Mapping[str, str] | None = None) -> Target:
    """The :class:`Target` a forwarding URL names; a malformed URL is a ConfigurationError."""
    env = os.environ if env is None else env
    p = _parse(url)
    if p.scheme.startswith("syslog"):
        return SyslogTarget.from_url(p)
    if p.scheme.startswith("splunk-hec"):
        return SplunkHecTarget.from_url(p, env)
    return OtlpTarget.from_url(p)


class SyslogTarget:
    """RFC 5424 over TCP or TLS, octet-counted; one connection per batch (see the module)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        facility: int = 13,
        hostname: str | None = None,
        timeout: float = 10.0,
        label: str = "",
    ) -> None:
        self.host, self.port, self.tls, self.facility, self.timeout = host, port, tls, facility, timeout
        self.hostname = _printable(hostname or socket.getfqdn() or "-", 255)
        self.label = label or f"syslog://{host}:{port}"

    @classmethod
    def from_url(cls, p: _Parsed) -> SyslogTarget:
        _known(
            p,
            ("facility", "hostname", "timeout", "ca")
            if p.scheme == "syslog+tls"
            else ("facility", "hostname", "timeout"),
        )
        if p.port is None:
            raise ConfigurationError(
                f"cannot forward to {p.url!r}: name the receiver's port (514, 6514, ...)"
            )
        name = p.params.get("facility", DEFAULT_FACILITY)
        facility = FACILITIES.get(name, int(name) if name.isdigit() else -1)
        if not 0 <= facility <= 23:
            raise ConfigurationError(
                f"cannot forward to {p.url!r}: facility={name!r} is not a facility (0 to 23, or "
                f"{', '.join(FACILITIES)})"
            )
        tls = _tls_context(p) if p.scheme == "syslog+tls" else None
        return cls(
            p.host,
            p.port,
            tls=tls,
            facility=facility,
            hostname=p.params.get("hostname"),
            timeout=_timeout(p),
            label=p.url,
        )

    def line(self, doc: Mapping[str, Any]) -> bytes:
        """One RFC 5424 message: no structured data, the ECS document as MSG (UTF-8, no BOM:
        a BOM would stop the JSON parsers on the receiving side)."""
        pri = self.facility * 8 + severity(doc)[0]
        msgid = _printable(doc["event"]["action"], 32)
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        return f"<{pri}>1 {doc['@timestamp']} {self.hostname} connect-audit - {msgid} - {body}".encode()

    def frames(self, docs: Iterable[Mapping[str, Any]]) -> bytes:
        return b"".join(b"%d %s" % (len(m), m) for m in map(self.line, docs))

    def send(self, docs: list[dict[str, Any]]) -> None:
        data = self.frames(docs)
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as raw:
                conn = self.tls.wrap_socket(raw, server_hostname=self.host) if self.tls else raw
                conn.sendall(data)
                _finish(conn, self.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise ForwardError(
                f"{self.label}: the receiver's certificate was refused: {exc.verify_message}"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ForwardError(f"{self.label}: {_socket_problem(exc)}") from None

    def close(self) -> None:
        pass


def _finish(conn: socket.socket, timeout: float) -> None:
    """Half-close and wait for the receiver to close its side: proof that it read every byte."""
    conn.settimeout(timeout)
    if isinstance(conn, ssl.SSLSocket):
        try:
            conn = conn.unwrap()  # our close_notify, then the receiver's
        except ssl.SSLEOFError:
            return  # it closed the connection after reading our close_notify, which came last
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(4096):
        pass


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header fields are PRINTUSASCII (33 to 126), bounded; anything else becomes _."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return cleaned or "-"


def _socket_problem(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "the receiver did not answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the receiver running?)"
    if isinstance(exc, ConnectionError):
        return (
            f"the connection broke ({exc.__class__.__name__}: {exc})" if str(exc) else "the connection broke"
        )
    if isinstance(exc, socket.gaierror):
        return f"the host name did not resolve ({exc.strerror})"
    return f"{exc.__class__.__name__}: {exc}"


class SplunkHecTarget:
    """Splunk's HTTP Event Collector: a POST of concatenated event objects to
    ``/services/collector/event`` with ``Authorization: Splunk <token>``."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        index: str | None = None,
        source: str = "connect-audit",
        sourcetype: str = "_json",
        verify: bool | str = True,
        timeout: float = 10.0,
        session: Any = None,
        label: str = "",
    ) -> None:
        import requests

        self.endpoint, self.index, self.source, self.sourcetype = endpoint, index, source, sourcetype
        self.verify, self.timeout = verify, timeout
        self._token = token
        self.session = session or requests.Session()
        self.host = socket.getfqdn() or None
        self.label = label or endpoint

    @classmethod
    def from_url(cls, p: _Parsed, env: Mapping[str, str]) -> SplunkHecTarget:
        _known(p, ("token_env", "index", "source", "sourcetype", "timeout", "ca"))
        variable = p.params.get("token_env", SPLUNK_TOKEN_ENV)
        token = env.get(variable, "").strip()
        if not token:
            raise ConfigurationError(
                f"forwarding to {p.url!r} needs the HEC token in the environment variable "
                f"{variable}, which is not set"
            )
        https = p.scheme == "splunk-hec"
        if not https and p.params.get("ca"):
            raise ConfigurationError(f"cannot forward to {p.url!r}: ca= is for splunk-hec:// (HTTPS)")
        port = p.port or 8088
        path = p.path.rstrip("/") or "/services/collector/event"
        endpoint = f"{'https' if https else 'http'}://{_netloc(p.host, port)}{path}"
        return cls(
            endpoint,
            token,
            index=p.params.get("index"),
            source=p.params.get("source", "connect-audit"),
            sourcetype=p.params.get("sourcetype", "_json"),
            verify=_ca_file(p) or True,
            timeout=_timeout(p),
            label=p.url,
        )

    def body(self, docs: Iterable[Mapping[str, Any]]) -> bytes:
        lines = []
        for doc in docs:
            envelope = {
                "time": _epoch(doc["@timestamp"]),
                "host": self.host,
                "source": self.source,
                "sourcetype": self.sourcetype,
                "index": self.index,
                "event": doc,
            }
            lines.append(
                json.dumps(
                    {k: v for k, v in envelope.items() if v is not None},
                    ensure_ascii=False,
                    separators=(",", ":"),
                )
            )
        return "\n".join(lines).encode()

    def send(self, docs: list[dict[str, Any]]) -> None:
        headers = {"Authorization": f"Splunk {self._token}", "Content-Type": "application/json"}
        try:
            answer = self.session.post(
                self.endpoint, data=self.body(docs), headers=headers, timeout=self.timeout, verify=self.verify
            )
        except Exception as exc:  # noqa: BLE001  (requests' errors: named, never with the token)
            raise ForwardError(
                f"{self.label}: could not reach the HTTP Event Collector ({exc.__class__.__name__})"
            ) from None
        if answer.status_code != 200:
            raise ForwardError(
                f"{self.label}: the HTTP Event Collector answered {answer.status_code}{_hec_text(answer)}"
            )

    def close(self) -> None:
        self.session.close()


def _hec_text(answer: Any) -> str:
    try:
        found = answer.json()
    except ValueError:
        return ""
    if isinstance(found, dict) and "text" in found:
        return f": {str(found['text'])[:200]} (code {found.get('code')})"
    return ""


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _epoch(stamp: str) -> float:
    return round(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp(), 6)


class OtlpTarget:
    """OpenTelemetry logs over OTLP/HTTP (protobuf), sent by the SDK's own exporter. The
    exporter honours the standard ``OTEL_EXPORTER_OTLP_*`` variables (headers, compression,
    client certificates); it retries a busy receiver itself within ``timeout``."""

    def __init__(
        self, endpoint: str, *, certificate_file: str | None = None, timeout: float = 10.0, label: str = ""
    ) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        except ImportError:
            raise ConfigurationError(
                "forwarding to OTLP needs the opentelemetry exporter: pip install 'connect-audit[forward]'"
            ) from None
        import requests

        self.endpoint, self.label = endpoint, label or endpoint
        self._last_status: int | None = None
        session = requests.Session()
        session.hooks["response"].append(self._seen)
        self._exporter = OTLPLogExporter(
            endpoint=endpoint, certificate_file=certificate_file, timeout=timeout, session=session
        )
        self._resource = Resource.create({"service.name": "connect-audit", "service.version": __version__})
        self._scope = InstrumentationScope("collector.forward", __version__)

    @classmethod
    def from_url(cls, p: _Parsed) -> OtlpTarget:
        https = p.scheme == "otlp+https"
        _known(p, ("timeout", "ca") if https else ("timeout",))
        path = p.path.rstrip("/") or "/v1/logs"
        endpoint = f"{'https' if https else 'http'}://{_netloc(p.host, p.port or 4318)}{path}"
        return cls(endpoint, certificate_file=_ca_file(p), timeout=_timeout(p), label=p.url)

    def _seen(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self._last_status = response.status_code

    def records(self, docs: Iterable[Mapping[str, Any]]) -> list[Any]:
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.sdk._logs import ReadableLogRecord

        now = time.time_ns()
        out = []
        for doc in docs:
            _, number, text = severity(doc)
            attributes = {k: v for k, v in flatten(doc).items() if k not in ("@timestamp", "message")}
            record = LogRecord(
                timestamp=int(_epoch(doc["@timestamp"]) * 1_000_000) * 1000,
                observed_timestamp=now,
                severity_number=SeverityNumber(number),
                severity_text=text,
                body=doc["message"],
                attributes=attributes,
                event_name=f"connect_audit.{doc['event']['action']}",
            )
            out.append(
                ReadableLogRecord(
                    log_record=record, resource=self._resource, instrumentation_scope=self._scope
                )
            )
        return out

    def send(self, docs: list[dict[str, Any]]) -> None:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        self._last_status = None
        if self._exporter.export(self.records(docs)) != LogRecordExportResult.SUCCESS:
            seen = self._last_status
            raise ForwardError(
                f"{self.label}: the OTLP receiver " + (f"answered {seen}" if seen else "could not be reached")
            )

    def close(self) -> None:
        self._exporter.shutdown()


# --------------------------------------------------------------------------- the cursor


@dataclass(frozen=True)
class CursorState:
    """A destination's cursor as stored: ``behind`` is how many events are not yet sent."""

    name: str
    seq: int
    forwarded: int
    holder: str | None
    lease_until: datetime | None
    updated_at: datetime
    failing_since: datetime | None
    last_error: str | None
    behind: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("lease_until", "updated_at", "failing_since"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


def cursors(store: Any, name: str | None = None) -> list[CursorState]:
    """Every destination's cursor (or ``name``'s only), and how far behind the log's head each is."""
    table = ForwardCursor.__table__
    stmt = sa.select(table).order_by(table.c.name)
    if name is not None:
        stmt = stmt.where(table.c.name == name)
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
        head = conn.execute(sa.select(sa.func.max(AuditEvent.__table__.c.seq))).scalar() or 0
        return [CursorState(**dict(row), behind=_count_after(conn, row["seq"], head)) for row in rows]


def _count_after(conn: sa.Connection, seq: int, head: int) -> int:
    events = AuditEvent.__table__
    if head <= seq:
        return 0
    return conn.execute(sa.select(sa.func.count()).where(events.c.seq > seq)).scalar() or 0


class Forwarder:
    """Sends a store's events after a destination's cursor, in ``seq`` order, and moves the
    cursor after each batch the receiver accepted (see the module)."""

    def __init__(
        self,
        store: Any,
        target: Target | str,
        *,
        name: str | None = None,
        batch_size: int = BATCH_SIZE,
        start: str = "beginning",
        lease_seconds: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if start not in STARTS:
            raise ConfigurationError(f"start must be one of {', '.join(STARTS)}, not {start!r}")
        if batch_size < 1:
            raise ConfigurationError("the batch size must be at least 1")
        self.store = store
        self.target = destination(target, env=env) if isinstance(target, str) else target
        self.name = name or self.target.label
        self.batch_size, self.start, self.lease_seconds, self.clock = batch_size, start, lease_seconds, clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.sent = 0  # events this forwarder had accepted, since it was made
        self.holds = False  # whether the last claim() took the lease

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # -- the lease -----------------------------------------------------------------------

    def claim(self) -> bool:
        """Take (or renew) the destination's lease; False while another forwarder holds it."""
        table = ForwardCursor.__table__
        now = self._now()
        with self.store.transaction() as conn:
            if conn.execute(sa.select(table.c.name).where(table.c.name == self.name)).first() is None:
                start = 0
                if self.start == "now":
                    start = conn.execute(sa.select(sa.func.max(AuditEvent.__table__.c.seq))).scalar() or 0
                conn.execute(sa.insert(table).values(name=self.name, seq=start, forwarded=0, updated_at=now))
            taken = conn.execute(
                sa.update(table)
                .where(table.c.name == self.name)
                .where(
                    sa.or_(table.c.holder.is_(None), table.c.holder == self.holder, table.c.lease_until < now)
                )
                .values(holder=self.holder, lease_until=now + timedelta(seconds=self.lease_seconds))
            ).rowcount
        self.holds = taken == 1
        return self.holds

    def release(self) -> None:
        """Give the lease up, so that another forwarder can take over at once."""
        table = ForwardCursor.__table__
        try:
            with self.store.transaction() as conn:
                conn.execute(
                    sa.update(table)
                    .where(table.c.name == self.name, table.c.holder == self.holder)
                    .values(holder=None, lease_until=None)
                )
        except StoreUnavailable as exc:
            log.warning("connect-audit forward: could not release the lease on %s: %s", self.name, exc)

    # -- sending --------------------------------------------------------------------------

    def _cursor(self) -> int:
        table = ForwardCursor.__table__
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(table.c.seq).where(table.c.name == self.name)).scalar() or 0

    def _batch(self, after: int) -> list[dict[str, Any]]:
        events = AuditEvent.__table__
        with self.store.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(events)
                    .where(events.c.seq > after)
                    .order_by(events.c.seq)
                    .limit(self.batch_size)
                )
                .mappings()
                .all()
            )
        return [ecs_event(row) for row in rows]

    def _advance(self, seq: int, count: int) -> None:
        table = ForwardCursor.__table__
        now = self._now()
        with self.store.transaction() as conn:
            moved = conn.execute(
                sa.update(table)
                .where(table.c.name == self.name, table.c.holder == self.holder)
                .values(
                    seq=seq,
                    forwarded=table.c.forwarded + count,
                    updated_at=now,
                    failing_since=None,
                    last_error=None,
                    lease_until=now + timedelta(seconds=self.lease_seconds),
                )
            ).rowcount
        if moved != 1:
            raise LeaseLost(f"{self.name}: another forwarder took the destination over")

    def _failed(self, problem: str) -> None:
        table = ForwardCursor.__table__
        now = self._now()
        try:
            with self.store.transaction() as conn:
                conn.execute(
                    sa.update(table)
                    .where(table.c.name == self.name, table.c.holder == self.holder)
                    .values(
                        failing_since=sa.func.coalesce(table.c.failing_since, now),
                        last_error=problem[:500],
                        updated_at=now,
                    )
                )
        except StoreUnavailable as exc:
            log.warning("connect-audit forward: could not note a failure on %s: %s", self.name, exc)

    def forward_available(self, *, progress: Callable[[int], None] | None = None) -> int:
        """Send every event after the cursor, batch by batch, and return how many were accepted.

        Raises :class:`ForwardError` (and notes it on the cursor) when a batch is not accepted:
        the cursor stays before it, so the next call sends it again. The caller must hold the
        lease (:meth:`claim`).
        """
        sent = 0
        after = self._cursor()
        while True:
            docs = self._batch(after)
            if not docs:
                return sent
            try:
                self.target.send(docs)
            except ForwardError as exc:
                # Kept without the destination's name in front: the row is the destination's.
                self._failed(str(exc).removeprefix(f"{self.target.label}: "))
                raise
            after = docs[-1]["event"]["sequence"]
            self._advance(after, len(docs))
            sent += len(docs)
            self.sent += len(docs)
            if progress is not None:
                progress(sent)

    def close(self) -> None:
        self.release()
        self.target.close()


class ForwardThread:
    """A recorder's forwarder: sends as events are written (woken after each batch), polls for
    events that other processes wrote, and backs off while the receiver is down."""

    def __init__(
        self,
        store: Any,
        url: str,
        *,
        poll: float = 1.0,
        max_backoff: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.forwarder = Forwarder(store, url, env=env)
        self.poll, self.max_backoff = poll, max_backoff
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="connect-audit-forward", daemon=True)
        self.last_error: str | None = None

    def start(self) -> ForwardThread:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        """One last pass over what was written, then stop and give the lease up."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        backoff = 0.0
        try:
            while True:
                backoff, self.last_error = attempt(self.forwarder, backoff, max_backoff=self.max_backoff,
                                                   errors=(ForwardError, StoreUnavailable))
                if self.last_error:
                    log.warning("connect-audit forward: %s; trying again", self.last_error)
                if self._stop.is_set():
                    return
                self._wake.wait(backoff or self._idle())
                self._wake.clear()
        finally:
            self.forwarder.close()

    def _idle(self) -> float:
        # A forwarder without the lease looks again before it would run out.
        return self.poll if self.forwarder.holds else max(self.poll, self.forwarder.lease_seconds / 3)


def attempt(forwarder: Forwarder, backoff: float, *, max_backoff: float = 60.0,
            errors: tuple[type[Exception], ...] = (ForwardError,)) -> tuple[float, str | None]:
    """One claim-and-send: (the back-off before the next try, 0 when none is due; the failure).

    A destination another forwarder holds, or one taken over while sending, is not a failure;
    one of ``errors`` doubles the back-off, from 1 s up to ``max_backoff``."""
    try:
        if forwarder.claim():
            forwarder.forward_available()
    except LeaseLost:
        pass
    except errors as exc:
        return min(max(backoff * 2, 1.0), max_backoff), str(exc)
    return 0.0, None


def from_env(env: Mapping[str, str] | None = None) -> list[str]:
    """The destinations in ``CONNECT_AUDIT_FORWARD`` (URLs separated by spaces or commas)."""
    env = os.environ if env is None else env
    text = env.get("CONNECT_AUDIT_FORWARD", "")
    return [u for u in text.replace(",", " ").split() if u]
