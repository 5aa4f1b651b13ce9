"""Forwarding (collector.forward, ``connect-audit forward``) against real receivers on loopback:
Debian's rsyslog over TCP and TLS, and the HEC and OTLP receivers of tests/receivers.py, each
killed and started again mid-run to show that nothing is lost and at most one batch repeats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from forwardkit import RSYSLOGD, ReceiverProcess, Rsyslog, certificates, free_port
from storekit import env_for_child, records

from collector import events as ev
from collector.cli import main
from collector.errors import ConfigurationError
from collector.forward import (
    ECS_VERSION,
    Forwarder,
    ForwardError,
    LeaseLost,
    cursors,
    destination,
    ecs_event,
)
from collector.recorder import Recorder
from collector.store import Store

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "0b5e2c4a-7f1d-4e8a-9c3b-hec-token-canary"


@pytest.fixture
def rsyslog_available():
    from conftest import _unavailable

    if not os.access(RSYSLOGD, os.X_OK):
        _unavailable(f"rsyslog ({RSYSLOGD}; apt-get install rsyslog rsyslog-openssl)")


def _fill(store: Store, n: int, prefix: str = "e", **fields) -> list[str]:
    rows = records(n, start=datetime.now(UTC) - timedelta(hours=1), prefix=prefix)
    for i, r in enumerate(rows):
        for key, value in fields.items():
            setattr(r, key, value(i) if callable(value) else value)
    with Recorder(store, rollup_interval=None) as rec:
        for r in rows:
            rec.record(r)
        rec.flush()
    return [r.event_id for r in rows]


def _stored(store: Store) -> list[dict]:
    import sqlalchemy as sa

    from collector.models import AuditEvent

    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(AuditEvent.__table__).order_by("seq")).mappings()]


# --------------------------------------------------------------------------- the ECS document


def test_an_event_maps_to_ecs_names_and_keeps_its_chain_fields(store):
    _fill(
        store,
        2,
        outcome=lambda i: ev.DENIED if i else ev.ALLOWED,
        status=lambda i: 403 if i else 200,
        reason=lambda i: "scope" if i else None,
        account_id="5b10ac8d82e05b22cc7d4ef5",
    )
    allowed, denied = (ecs_event(row) for row in _stored(store))
    assert denied["ecs"] == {"version": ECS_VERSION}
    assert denied["event"]["outcome"] == "failure" and allowed["event"]["outcome"] == "success"
    assert denied["event"]["category"] == ["api"] and denied["event"]["type"] == ["access", "denied"]
    assert denied["event"]["reason"] == "scope" and denied["http"]["response"]["status_code"] == 403
    assert denied["http"]["request"]["method"] == "GET" and denied["url"]["path"].startswith(
        "/wiki/rest/api/"
    )
    assert denied["url"]["domain"] == "t1.atlassian.net" and denied["organization"]["id"] == "tenant-1"
    assert denied["user"]["id"] == "5b10ac8d82e05b22cc7d4ef5"
    assert denied["event"]["duration"] == int(11.0 * 1_000_000)  # nanoseconds
    row = _stored(store)[1]
    assert denied["event"]["sequence"] == row["seq"] and denied["event"]["hash"] == row["hash"]
    assert denied["connect_audit"]["prev_hash"] == row["prev_hash"]
    assert denied["connect_audit"]["claims"]["qsh_kind"] == "computed"
    assert denied["@timestamp"].endswith("Z") and denied["event"]["id"] == row["event_id"]
    assert (
        "outgoing request GET /wiki/rest/api/content/1 403 denied (scope) on https://t1.atlassian.net/wiki"
        in denied["message"]
    )
    assert "reason" not in allowed["event"]  # empty fields are left out, not sent as null


@pytest.mark.parametrize(
    "url, problem",
    [
        ("ftp://example.com", "the scheme must be one of"),
        ("syslog+tcp://user:secret@127.0.0.1:514", "must not carry credentials"),
        ("syslog+tcp://127.0.0.1", "name the receiver's port"),
        ("syslog+tcp://127.0.0.1:514?facility=nope", "facility='nope' is not a facility"),
        ("syslog+tcp://127.0.0.1:514?colour=red", "unknown parameter 'colour'"),
        (
            "syslog+tls://127.0.0.1:6514?ca=/nonexistent/ca.pem",
            "the CA file '/nonexistent/ca.pem' does not exist",
        ),
        ("syslog+tcp://127.0.0.1:99999", "Port out of range"),
        ("splunk-hec://127.0.0.1:8088", "CONNECT_AUDIT_SPLUNK_HEC_TOKEN, which is not set"),
        ("splunk-hec://127.0.0.1?token_env=MY_HEC", "MY_HEC, which is not set"),
        ("otlp+http://127.0.0.1:4318?timeout=0", "timeout= must be a positive number"),
    ],
)
def test_a_malformed_destination_is_refused_with_the_reason(url, problem):
    with pytest.raises(ConfigurationError, match=problem.replace("(", r"\(").replace("?", r"\?")) as caught:
        destination(url, env={})
    assert "secret" not in str(caught.value)


def test_the_command_refuses_a_bad_destination_with_exit_2(sqlite_url, isolated_keys, capsys):
    Store.open(sqlite_url).close()
    assert main(["forward", "--database", sqlite_url, "--to", "syslog+udp://127.0.0.1:514", "--once"]) == 2
    assert "the scheme must be one of" in capsys.readouterr().err
    assert main(["forward", "--database", sqlite_url, "--once"]) == 2
    assert "name the destination with --to URL" in capsys.readouterr().err


# --------------------------------------------------------------------------- syslog (rsyslog)


@pytest.mark.slow
def test_syslog_over_tcp_reaches_rsyslog_as_rfc5424(database_url, isolated_keys, tmp_path, rsyslog_available):
    with Store.open(database_url) as store, Rsyslog(tmp_path / "rsyslog") as receiver:
        ids = _fill(
            store,
            120,
            outcome=lambda i: ev.REJECTED if i % 10 == 0 else ev.ALLOWED,
            reason=lambda i: "qsh_mismatch" if i % 10 == 0 else None,
            direction=ev.INCOMING,
            event_type="incoming_request",
        )
        forwarder = Forwarder(
            store, f"syslog+tcp://127.0.0.1:{receiver.port}?facility=local3&hostname=app-1", batch_size=50
        )
        assert forwarder.claim()
        assert forwarder.forward_available() == 120
        got = receiver.wait_for(120)
        stored = {r["event_id"]: r for r in _stored(store)}
    assert [json.loads(m["msg"])["event"]["id"] for m in got] == ids  # in order, once each
    for m in got:
        doc = json.loads(m["msg"])
        row = stored[doc["event"]["id"]]
        assert m["facility"] == "19"  # local3, as rsyslog parsed the PRI
        assert m["severity"] == ("4" if row["outcome"] == ev.REJECTED else "6")
        assert datetime.fromisoformat(m["timestamp"]) == row["ts"]
        assert (m["hostname"], m["app_name"], m["procid"], m["msgid"], m["sd"]) == (
            "app-1",
            "connect-audit",
            "-",
            "incoming_request",
            "-",
        )
        assert doc["event"]["category"] == ["authentication", "web"]
    assert json.loads(got[0]["msg"])["event"]["reason"] == "qsh_mismatch"
    state = next(c for c in cursors(Store.open(database_url)) if c.name == forwarder.name)
    assert state.behind == 0 and state.forwarded == 120 and state.last_error is None


@pytest.mark.slow
def test_syslog_over_tls_verifies_the_receiver_and_resumes_after_it_restarts(
    sqlite_url, isolated_keys, tmp_path, rsyslog_available
):
    ca, cert, key = certificates(tmp_path)
    with Store.open(sqlite_url) as store:
        ids = _fill(store, 60)
        receiver = Rsyslog(tmp_path / "rsyslog", tls=(ca, cert, key)).start()
        try:
            # Without our CA the receiver's certificate is refused, and the cursor does not move.
            untrusting = Forwarder(
                store, f"syslog+tls://127.0.0.1:{receiver.port}", name="tls", batch_size=25
            )
            assert untrusting.claim()
            with pytest.raises(ForwardError, match="certificate was refused"):
                untrusting.forward_available()
            state = next(c for c in cursors(store) if c.name == "tls")
            assert state.seq == 0 and state.failing_since is not None and "certificate" in state.last_error
            untrusting.release()

            forwarder = Forwarder(
                store, f"syslog+tls://127.0.0.1:{receiver.port}?ca={ca}", name="tls", batch_size=25
            )
            assert forwarder.claim() and forwarder.forward_available() == 60
            assert len(receiver.wait_for(60)) == 60
            receiver.stop()  # the receiver goes away: new events wait, the cursor stays
            more = _fill(store, 40, prefix="more")
            with pytest.raises(ForwardError, match="connection refused"):
                forwarder.forward_available()
            assert next(c for c in cursors(store) if c.name == "tls").behind == 40
            receiver.start()
            assert forwarder.forward_available() == 40
            got = receiver.wait_for(100)
        finally:
            receiver.stop()
    assert [json.loads(m["msg"])["event"]["id"] for m in got] == ids + more
    assert next(c for c in cursors(Store.open(sqlite_url)) if c.name == "tls").failing_since is None


# --------------------------------------------------------------------------- Splunk HEC


@pytest.mark.slow
def test_splunk_hec_gets_its_request_shape_and_token_header(sqlite_url, isolated_keys, tmp_path, caplog):
    with Store.open(sqlite_url) as store, ReceiverProcess("hec", tmp_path, token=TOKEN, busy=1) as receiver:
        ids = _fill(store, 30)
        url = f"splunk-hec+http://127.0.0.1:{receiver.port}?index=atlassian&sourcetype=connect_audit:ecs"
        wrong = Forwarder(store, url, env={"CONNECT_AUDIT_SPLUNK_HEC_TOKEN": "not-the-token"}, name="hec")
        assert wrong.claim()
        with pytest.raises(ForwardError, match="answered 503: Server is busy") as busy:
            wrong.forward_available()  # (the receiver's first answer)
        with pytest.raises(ForwardError, match="answered 403: Invalid token") as refused:
            wrong.forward_available()
        wrong.release()
        forwarder = Forwarder(
            store, url, env={"CONNECT_AUDIT_SPLUNK_HEC_TOKEN": TOKEN}, name="hec", batch_size=7
        )
        assert forwarder.claim() and forwarder.forward_available() == 30
        got = receiver.wait_for(30)
        state = next(c for c in cursors(store) if c.name == "hec")
    assert [e["event"]["event"]["id"] for e in got] == ids
    first = got[0]
    assert first["index"] == "atlassian" and first["sourcetype"] == "connect_audit:ecs"
    assert first["source"] == "connect-audit" and isinstance(first["time"], float)
    assert abs(first["time"] - datetime.fromisoformat(first["event"]["@timestamp"]).timestamp()) < 1e-5
    for text in (str(busy.value), str(refused.value), caplog.text, state.last_error or "", json.dumps(got)):
        assert TOKEN not in text and "not-the-token" not in text
    for path in tmp_path.rglob("audit.db*"):  # nor anywhere in the store's files
        assert TOKEN.encode() not in path.read_bytes() and b"not-the-token" not in path.read_bytes()


@pytest.mark.slow
def test_a_receiver_killed_mid_run_loses_nothing_and_repeats_at_most_a_batch(
    database_url, isolated_keys, tmp_path
):
    """The forwarder follows the log (the command, as a process) while the HEC receiver is
    killed with SIGKILL and started again on its port, and then the forwarder itself is."""
    with Store.open(database_url) as store:
        ids = _fill(store, 3000)
    receiver = ReceiverProcess("hec", tmp_path, token=TOKEN).start()
    env = {**env_for_child(tmp_path), "CONNECT_AUDIT_SPLUNK_HEC_TOKEN": TOKEN}
    cmd = [
        sys.executable,
        "-m",
        "collector.cli",
        "forward",
        "--database",
        database_url,
        "--batch",
        "100",
        "--every",
        "0.2",
        "--to",
        f"splunk-hec+http://127.0.0.1:{receiver.port}",
    ]

    def follow():
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    proc = follow()
    try:
        receiver.wait_for(500, timeout=60)
        receiver.stop()  # mid-run: the forwarder's next batch fails and waits
        time.sleep(1.5)
        receiver = ReceiverProcess("hec", tmp_path, token=TOKEN, port=receiver.port).start()
        receiver.wait_for(1500, timeout=60)
        proc.send_signal(signal.SIGKILL)  # the forwarder dies between batches or inside one
        proc.wait(10)
        proc = follow()  # a new process waits out the dead one's lease, then resumes
        got = receiver.wait_for(3000, timeout=90)
    finally:
        proc.kill()
        proc.wait(10)
        receiver.stop()
    copies = Counter(e["event"]["event"]["id"] for e in got)
    assert set(copies) == set(ids)  # nothing lost
    assert sum(n - 1 for n in copies.values()) <= 2 * 100  # at most the in-flight batch, per kill


# --------------------------------------------------------------------------- OpenTelemetry


@pytest.mark.slow
def test_otlp_http_carries_each_event_as_a_log_record(sqlite_url, isolated_keys, tmp_path):
    with Store.open(sqlite_url) as store, ReceiverProcess("otlp", tmp_path) as receiver:
        ids = _fill(
            store,
            40,
            outcome=lambda i: ev.ERROR if i == 3 else ev.ALLOWED,
            status=lambda i: 502 if i == 3 else 200,
        )
        forwarder = Forwarder(store, f"otlp+http://127.0.0.1:{receiver.port}", batch_size=15)
        assert forwarder.claim() and forwarder.forward_available() == 40
        got = receiver.wait_for(40)
        stored = _stored(store)
    assert [_attrs(e)["event.id"] for e in got] == ids
    third = got[3]
    record, attrs = third["record"], _attrs(third)
    assert record["severityNumber"] == "SEVERITY_NUMBER_ERROR" and record["severityText"] == "ERROR"
    assert record["body"]["stringValue"].startswith("outgoing request GET /wiki/rest/api/content/3 502 error")
    assert record["eventName"] == "connect_audit.request"
    assert attrs["http.response.status_code"] == "502" and attrs["event.outcome"] == "failure"
    assert json.loads(attrs["connect_audit.claims"])["qsh_kind"] == "computed"
    assert int(record["timeUnixNano"]) == int(stored[3]["ts"].timestamp() * 1_000_000) * 1000
    resource = {a["key"]: a["value"]["stringValue"] for a in third["resource"]["attributes"]}
    assert resource["service.name"] == "connect-audit" and third["scope"] == "collector.forward"


def _attrs(entry: dict) -> dict:
    out = {}
    for a in entry["record"]["attributes"]:
        value = a["value"]
        out[a["key"]] = next(iter(value.values())) if value else None
    return out


@pytest.mark.slow
def test_otlp_receiver_down_then_back_loses_nothing(sqlite_url, isolated_keys, tmp_path):
    port = free_port()
    with Store.open(sqlite_url) as store:
        ids = _fill(store, 50)
        forwarder = Forwarder(store, f"otlp+http://127.0.0.1:{port}?timeout=1", batch_size=20)
        assert forwarder.claim()
        with pytest.raises(ForwardError, match="OTLP receiver could not be reached"):
            forwarder.forward_available()
        with ReceiverProcess("otlp", tmp_path, port=port) as receiver:
            assert forwarder.forward_available() == 50
            got = receiver.wait_for(50)
    assert [_attrs(e)["event.id"] for e in got] == ids


# --------------------------------------------------------------------------- the cursor and its lease


def test_one_forwarder_at_a_time_holds_a_destination(store, isolated_keys):
    clock = [1_000_000.0]
    a = Forwarder(store, "syslog+tcp://127.0.0.1:9", name="d", clock=lambda: clock[0])
    b = Forwarder(store, "syslog+tcp://127.0.0.1:9", name="d", clock=lambda: clock[0])
    assert a.claim() and not b.claim() and a.claim()  # renewing is not taking
    clock[0] += 31  # a's lease ran out (it died): b takes over, and a can no longer move the cursor
    assert b.claim()
    with pytest.raises(LeaseLost):
        a._advance(5, 5)
    b.release()
    assert a.claim()


def test_a_new_destination_can_start_at_the_head(store, isolated_keys, tmp_path):
    _fill(store, 10)
    head = _stored(store)[-1]["seq"]
    fwd = Forwarder(store, "syslog+tcp://127.0.0.1:9", start="now")
    assert fwd.claim() and fwd.forward_available() == 0  # nothing sent, nothing tried
    assert next(c for c in cursors(store) if c.name == fwd.name).seq == head


@pytest.mark.slow
def test_the_command_once_prints_the_count_and_fails_while_the_receiver_is_down(
    sqlite_url, isolated_keys, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("CONNECT_AUDIT_SPLUNK_HEC_TOKEN", TOKEN)
    with Store.open(sqlite_url) as store:
        _fill(store, 25)
    port = free_port()
    args = [
        "forward",
        "--database",
        sqlite_url,
        "--to",
        f"splunk-hec+http://127.0.0.1:{port}",
        "--once",
        "--json",
    ]
    assert main(args) == 1
    down = json.loads(capsys.readouterr().out)
    assert down["forwarded"] == 0 and down["behind"] == 25 and "could not reach" in down["error"]
    with ReceiverProcess("hec", tmp_path, token=TOKEN, port=port):
        assert main(args) == 0
        report = json.loads(capsys.readouterr().out)
        assert report == {
            "destination": f"splunk-hec+http://127.0.0.1:{port}",
            "forwarded": 25,
            "cursor": report["cursor"],
            "behind": 0,
            "error": None,
        }
        assert main(args[:-1]) == 0
        assert "forwarded 0 events to" in capsys.readouterr().out
    assert main(["forward", "--database", sqlite_url, "--status"]) == 0
    status = capsys.readouterr().out
    assert f"splunk-hec+http://127.0.0.1:{port}: 25 sent" in status and "0 behind" in status
    assert TOKEN not in status


# --------------------------------------------------------------------------- the recorder option


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_recorder_forwards_as_it_writes(sqlite_url, isolated_keys, tmp_path, writer):
    with Store.open(sqlite_url) as store, ReceiverProcess("otlp", tmp_path) as receiver:
        rec = Recorder(store, writer=writer, forward=[f"otlp+http://127.0.0.1:{receiver.port}"]).start()
        try:
            for r in records(30, prefix="live"):
                rec.record(r)
            got = receiver.wait_for(30, timeout=20)
            assert len(got) == 30  # without a flush or a close: woken by the written batch
            deadline = time.monotonic() + 10  # (the receiver stores a batch before it answers)
            while rec.stats()["forwarding"][0]["sent"] < 30 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert rec.stats()["forwarding"][0]["sent"] == 30
            for r in records(5, prefix="last"):
                rec.record(r)
        finally:
            rec.close()
        ids = [_attrs(e)["event.id"] for e in receiver.read()]
    assert ids[-5:] == [f"last-{i:07d}" for i in range(5)]  # close() sent the last ones
    assert not any(c.holder for c in cursors(Store.open(sqlite_url)))  # and gave the lease up


def test_a_recorder_refuses_a_malformed_destination_at_start_up(store, isolated_keys):
    with pytest.raises(ConfigurationError, match="the scheme must be one of"):
        Recorder(store, forward=["syslog://127.0.0.1:514"])
