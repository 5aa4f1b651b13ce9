"""Alerts: highlights sent to the people who act on them, by signed JSON webhook or to Slack.

A configuration file (TOML, below) names the destinations and the rules that pick which
highlights go where; without rules, every ``high`` highlight goes to every destination.
:meth:`Alerter.run_once` finds the window's highlights (:mod:`collector.highlights`), and
delivers each matching one once per destination: at least once (a delivery counts only on
a 2xx answer; a failed one is tried again with backoff, then again on the next run) and
deduplicated by a stable alert id (the highlight's kind, tenant, platform and first hour),
so a highlight that grows over an afternoon is one alert, not one per run. Every delivery and
every failure is an internal audit event (``alert_delivered``, ``alert_failed``): the log
shows who was told what, and when.

A webhook body is JSON (``alert_id``, ``rule``, ``highlight`` as ``connect-audit highlights
--json`` prints it, ``sent_at``), signed when a secret is configured::

    X-Connect-Audit-Timestamp: 1765108800
    X-Connect-Audit-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>

so a receiver checks the signature and refuses an old timestamp (a replay). Slack gets its
incoming-webhook format (``text`` and a ``section`` block). A webhook URL is a secret too
(Slack's carry their token in the path): logs, events and pages show only its scheme and
host.

Configuration::

    [destinations.ops]
    type = "webhook"                          # or "slack"
    url_env = "OPS_WEBHOOK_URL"               # the URL, from the environment (or url = "...")
    secret_env = "OPS_WEBHOOK_SECRET"         # the HMAC key, from the environment

    [[rules]]
    name = "high, to ops"
    severities = ["high"]                     # default ["high"]
    kinds = []                                # default: every kind
    tenants = []                              # clientKeys or sites; default: every tenant
    to = ["ops"]                              # default: every destination
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector import events as ev
from collector.errors import ConfigurationError
from collector.highlights import KINDS, SEVERITIES, Highlight, find, site_names

log = logging.getLogger(__name__)

CONFIG_ENV = "CONNECT_AUDIT_ALERTS"
DESTINATION_TYPES = ("webhook", "slack")
DELIVERED, FAILED = "alert_delivered", "alert_failed"
#: Answers worth another try: the receiver may be back in a moment.
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "connect-audit-alerts/1"


@dataclass(frozen=True)
class Destination:
    """Where alerts go; ``url`` and ``secret`` are never shown (``label`` is)."""

    name: str
    type: str
    url: str = field(repr=False)
    secret: bytes | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        parts = urlsplit(self.url)
        return f"{self.name} ({parts.scheme}://{parts.hostname or '?'}/…)"


@dataclass(frozen=True)
class Rule:
    name: str
    to: tuple[str, ...]
    severities: tuple[str, ...] = ("high",)
    kinds: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()

    def matches(self, h: Highlight, sites: Mapping[str, str]) -> bool:
        if h.severity not in self.severities or (self.kinds and h.kind not in self.kinds):
            return False
        return not self.tenants or h.tenant in self.tenants or sites.get(h.tenant or "") in self.tenants


@dataclass(frozen=True)
class AlertConfig:
    destinations: dict[str, Destination]
    rules: tuple[Rule, ...]

    @classmethod
    def load(cls, path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> AlertConfig:
        """Read the file at ``path`` (default: ``CONNECT_AUDIT_ALERTS``); a ConfigurationError
        says what is wrong with it."""
        env = os.environ if env is None else env
        chosen = path or env.get(CONFIG_ENV)
        if not chosen:
            raise ConfigurationError(f"no alert configuration: pass --config FILE or set {CONFIG_ENV}")
        try:
            text = Path(chosen).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"the alert configuration {chosen} cannot be read: {exc.strerror}") from exc
        return cls.parse(text, env=env, source=str(chosen))

    @classmethod
    def parse(cls, text: str, *, env: Mapping[str, str],
              source: str = "the alert configuration") -> AlertConfig:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{source} is not valid TOML: {exc}") from exc
        raw = doc.get("destinations")
        if not isinstance(raw, dict) or not raw:
            raise ConfigurationError(f"{source} names no destination: add a [destinations.NAME] table")
        destinations = {name: _destination(name, spec, env, source) for name, spec in raw.items()}
        rules = tuple(_rule(i, spec, destinations, source) for i, spec in enumerate(doc.get("rules") or []))
        if not rules:  # the documented default: every high highlight, everywhere
            rules = (Rule("high severities", tuple(destinations)),)
        return cls(destinations, rules)


def _destination(name: str, spec: Any, env: Mapping[str, str], source: str) -> Destination:
    where = f"{source}: destination {name!r}"
    if not isinstance(spec, dict):
        raise ConfigurationError(f"{where} must be a table")
    kind = spec.get("type")
    if kind not in DESTINATION_TYPES:
        raise ConfigurationError(
            f"{where}: type must be one of {', '.join(DESTINATION_TYPES)}, not {kind!r}")
    url = spec.get("url") or _from_env(spec.get("url_env"), env, f"{where}: url_env")
    if not url:
        raise ConfigurationError(f"{where} needs url or url_env")
    parts = urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigurationError(f"{where}: the URL must be https (http only on loopback)")
    secret = _from_env(spec.get("secret_env"), env, f"{where}: secret_env")
    return Destination(name, kind, url, secret.encode() if secret else None)


def _from_env(variable: Any, env: Mapping[str, str], where: str) -> str | None:
    if variable is None:
        return None
    value = env.get(str(variable))
    if not value:
        raise ConfigurationError(f"{where}: the environment variable {variable} is not set")
    return value


def _rule(i: int, spec: Any, destinations: Mapping[str, Destination], source: str) -> Rule:
    where = f"{source}: rule {i + 1}"
    if not isinstance(spec, dict):
        raise ConfigurationError(f"{where} must be a table ([[rules]])")
    to = tuple(spec.get("to") or destinations)
    unknown = [d for d in to if d not in destinations]
    if unknown:
        raise ConfigurationError(f"{where} sends to {', '.join(unknown)}, which no [destinations.*] names")
    severities = tuple(spec.get("severities") or ("high",))
    kinds = tuple(spec.get("kinds") or ())
    for label, values, allowed in (("severity", severities, SEVERITIES), ("kind", kinds, KINDS)):
        wrong = [v for v in values if v not in allowed]
        if wrong:
            raise ConfigurationError(f"{where}: unknown {label} {', '.join(map(repr, wrong))}; "
                                     f"use {', '.join(allowed)}")
    name = str(spec.get("name") or f"rule {i + 1}")
    return Rule(name, to, severities, kinds, tuple(spec.get("tenants") or ()))


def alert_id(h: Highlight) -> str:
    """The same highlight found again (grown, in a later run) has the same id."""
    key = "|".join((h.kind, h.tenant or "", h.platform or "", h.first_seen.astimezone(UTC).isoformat()))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Due:
    """One highlight for one destination by one rule, and whether an earlier run sent it."""

    highlight: Highlight
    rule: Rule
    destination: Destination
    alert_id: str
    event_id: str  # of its alert_delivered event: the dedup key
    sent_before: bool


@dataclass
class Report:
    delivered: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    already: int = 0  # deliveries made by an earlier run

    def as_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "failed": self.failed, "already_delivered": self.already}


class Alerter:
    """Delivers the highlights of a window by the configured rules (see the module docstring).

    ``session`` is anything with ``requests.Session.post``'s shape (inject one with a custom
    adapter in tests); ``sleep`` and ``clock`` are injectable so that backoff costs no time there.
    """

    def __init__(self, store: Any, config: AlertConfig, *, session: Any = None, attempts: int = 5,
                 backoff: float = 1.0, timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time, recorder: Any = None) -> None:
        if session is None:
            import requests

            session = requests.Session()
        self.store, self.config, self.session = store, config, session
        _hide_in_transport_logs(d.url for d in config.destinations.values())
        self.attempts, self.backoff, self.timeout = max(1, attempts), backoff, timeout
        self.sleep, self.clock, self.recorder = sleep, clock, recorder

    def due(self, *, since: datetime | None = None, now: datetime | None = None) -> list[Due]:
        """What the window's highlights call for, by rule and destination (sent or not)."""
        now = now or datetime.fromtimestamp(self.clock(), UTC)
        found = find(self.store, since=since or now - timedelta(hours=24), now=now)
        sites = _sites(self.store)
        pending = []
        for h in found:
            aid = alert_id(h)
            for rule in self.config.rules:
                if rule.matches(h, sites):
                    for name in rule.to:
                        dest = self.config.destinations[name]
                        event_id = f"alert-{aid}-{hashlib.sha256(dest.name.encode()).hexdigest()[:8]}"
                        pending.append((h, rule, dest, aid, event_id))
        sent = _sent_before(self.store, [p[-1] for p in pending])
        return [Due(*p, sent_before=p[-1] in sent) for p in pending]

    def run_once(self, *, since: datetime | None = None, now: datetime | None = None) -> Report:
        """Deliver what the window's highlights call for and has not been delivered yet."""
        report = Report()
        for item in self.due(since=since, now=now):
            if item.sent_before:
                report.already += 1
            else:
                self._one(item, report)
        return report

    def _one(self, item: Due, report: Report) -> None:
        h, dest = item.highlight, item.destination
        status, attempts, problem = self._deliver(dest, item.rule, h, item.alert_id)
        entry = {"alert_id": item.alert_id, "destination": dest.name, "kind": h.kind, "severity": h.severity,
                 "tenant": h.tenant, "attempts": attempts, "status": status}
        if problem is None:
            self._record(DELIVERED, ev.ALLOWED, item.event_id, f"Alert {h.kind} sent to {dest.label}", entry)
            report.delivered.append(entry)
            return
        entry["problem"] = problem
        log.warning("connect-audit alerts: %s could not be sent to %s: %s",
                    item.alert_id, dest.label, problem)
        self._record(FAILED, ev.ERROR, ev.new_event_id(),
                     f"Alert {h.kind} not sent to {dest.label}: {problem}", entry)
        report.failed.append(entry)

    def _deliver(self, dest: Destination, rule: Rule, h: Highlight,
                 aid: str) -> tuple[int | None, int, str | None]:
        body = _body(dest, rule, h, aid, self.clock())
        status: int | None = None
        problem = "not tried"
        for attempt in range(1, self.attempts + 1):
            headers = _headers(dest, body, aid, int(self.clock()))
            try:
                answer = self.session.post(dest.url, data=body, headers=headers, timeout=self.timeout)
            except Exception as exc:  # noqa: BLE001  (the transport's errors name the URL: never shown)
                status, problem, wait = None, _transport_problem(exc), self.backoff * 2 ** (attempt - 1)
            else:
                status = answer.status_code
                if 200 <= status < 300:
                    return status, attempt, None
                problem = f"the receiver answered {status}"
                if status not in RETRYABLE:
                    return status, attempt, problem  # a refusal that another try will not change
                wait = _retry_after(answer, self.backoff * 2 ** (attempt - 1))
            if attempt < self.attempts:
                self.sleep(wait)
        return status, self.attempts, f"{problem} ({self.attempts} attempts)"

    def _record(self, event_type: str, outcome: str, event_id: str, detail: str,
                extra: dict[str, Any]) -> None:
        from collector.actions import write_internal

        record = ev.AuditRecord(
            direction=ev.INTERNAL, outcome=outcome, event_type=event_type, auth_method=ev.NO_AUTH,
            identity_kind=ev.ANONYMOUS, event_id=event_id, tenant_client_key=extra.get("tenant"),
            detail=detail, extra={k: v for k, v in extra.items() if k != "tenant"},
            ts=datetime.fromtimestamp(self.clock(), UTC),
        )
        write_internal(self.store, record, recorder=self.recorder)


def _body(dest: Destination, rule: Rule, h: Highlight, aid: str, now: float) -> bytes:
    if dest.type == "slack":
        text = f"[{h.severity}] {h.summary}"
        return json.dumps({
            "text": _slack_escape(text),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(
                f"*{h.severity.upper()}* `{h.kind}`\n{h.summary}")}}],
        }).encode()
    sent = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return json.dumps({"alert_id": aid, "rule": rule.name, "highlight": h.as_dict(), "sent_at": sent,
                       "source": "connect-audit"}, sort_keys=True).encode()


def _headers(dest: Destination, body: bytes, aid: str, timestamp: int) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if dest.type == "webhook":
        headers["X-Connect-Audit-Alert-Id"] = aid
        headers["X-Connect-Audit-Timestamp"] = str(timestamp)
        if dest.secret:
            signed = hmac.new(dest.secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
            headers["X-Connect-Audit-Signature"] = f"sha256={signed}"
    return headers


def signature_matches(secret: bytes, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver runs: the signature header checks out for this body and timestamp."""
    expected = "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


class _Redact(logging.Filter):
    """Hides the secret part of destination URLs in urllib3's own debug lines (it logs each
    request's path and query: a Slack URL's path is its token)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets and isinstance(record.args, tuple):
            record.args = tuple(self._hide(a) if isinstance(a, str) else a for a in record.args)
        if self.secrets and isinstance(record.msg, str):
            record.msg = self._hide(record.msg)
        return True

    def _hide(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "/…")
        return text


_REDACT = _Redact()


def _hide_in_transport_logs(urls: Any) -> None:
    for url in urls:
        parts = urlsplit(url)
        secret = parts.path + (f"?{parts.query}" if parts.query else "")
        if secret not in ("", "/"):
            _REDACT.secrets.add(secret)
    target = logging.getLogger("urllib3.connectionpool")
    if _REDACT not in target.filters:
        target.addFilter(_REDACT)


def _slack_escape(text: str) -> str:
    # Slack's three control characters; anything else in a summary (a hostile title) is text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _retry_after(answer: Any, default: float) -> float:
    value = answer.headers.get("Retry-After", "") if getattr(answer, "headers", None) else ""
    try:
        return min(max(float(value), 0.0), 300.0)
    except ValueError:
        return default


def _transport_problem(exc: Exception) -> str:
    import requests

    if isinstance(exc, requests.Timeout):
        return "the receiver did not answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "the receiver could not be reached"
    return f"the request failed ({type(exc).__name__})"


def _sent_before(store: Any, event_ids: list[str]) -> set[str]:
    """Which of these delivery events the log holds (by its unique event_id index)."""
    import sqlalchemy as sa

    from collector.database import EVENTS, reading

    found: set[str] = set()
    with reading(store) as conn:
        for i in range(0, len(event_ids), 500):
            chunk = event_ids[i : i + 500]
            found.update(conn.execute(sa.select(EVENTS.c.event_id).where(EVENTS.c.event_id.in_(chunk))).scalars())
    return found


def _sites(store: Any) -> dict[str, str]:
    from collector.database import reading

    with reading(store) as conn:
        return site_names(conn)
