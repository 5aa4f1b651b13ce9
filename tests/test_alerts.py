"""Alerts over real HTTP on loopback: signed webhooks and Slack messages, each highlight once,
retried through a failing receiver, never a secret in the log, the output or the store."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from highlightkit import NOW, fill
from storekit import env_for_child

from collector import highlights
from collector.alerts import AlertConfig, Alerter, alert_id, signature_matches
from collector.errors import ConfigurationError

pytestmark = pytest.mark.usefixtures("isolated_keys")

HOOK_SECRET = "hmac-key-that-must-not-leak-7f3a"
SLACK_TOKEN = "T00000000/B00000000/slacktokenmustnotleak"
SINCE = NOW - timedelta(hours=24)
SLACK_OK = '[destinations.ops]\ntype = "slack"\nurl = "https://hooks.slack.com/x"\n'


class Receiver:
    """A loopback HTTP receiver that answers each request with the next status of ``script``
    (then 200), and keeps what it was sent."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def at(self, prefix):
        return [r for r in self.requests if r["path"].startswith(prefix)]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def config_text(receiver: Receiver, *, rules: str = "") -> str:
    return f"""
[destinations.ops]
type = "webhook"
url_env = "OPS_HOOK_URL"
secret_env = "OPS_HOOK_SECRET"

[destinations.chat]
type = "slack"
url = "{receiver.base}/services/{SLACK_TOKEN}"
{rules}
"""


def env_for(receiver: Receiver) -> dict[str, str]:
    return {
        "OPS_HOOK_URL": f"{receiver.base}/hooks/audit?token=url-secret-must-not-leak",
        "OPS_HOOK_SECRET": HOOK_SECRET,
    }


def alerts_once(config, url: str) -> list[str]:
    """``connect-audit alerts --once`` over the last three days, as a process."""
    return [sys.executable, "-m", "collector.cli", "alerts", "--config", str(config), "--database", url,
            "--since", "72h", "--once"]


def alerter(store, receiver, **kw) -> Alerter:
    config = AlertConfig.parse(config_text(receiver, rules=kw.pop("rules", "")), env=env_for(receiver))
    sleeps = kw.pop("sleeps", [])
    return Alerter(store, config, sleep=sleeps.append, clock=lambda: NOW.timestamp(), **kw)


def high(store) -> set[str]:
    return {alert_id(h) for h in highlights.find(store, since=SINCE, now=NOW) if h.severity == "high"}


def stored(store, event_type: str) -> list[dict]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM audit_events WHERE event_type = :t"), {"t": event_type})
        return [dict(r._mapping) for r in rows]


def test_high_highlights_go_once_as_signed_webhooks_and_slack_messages(database_url, receiver):
    with fill(database_url, anomalies=True) as store:
        wanted = high(store)
        assert len(wanted) >= 4  # the storm, the lock-down, the 401s, the first DELETE, the move
        report = alerter(store, receiver).run_once(since=SINCE, now=NOW)
        assert not report.failed and len(report.delivered) == 2 * len(wanted)
        hooks, slack = receiver.at("/hooks/"), receiver.at("/services/")
        assert {r["headers"]["X-Connect-Audit-Alert-Id"] for r in hooks} == wanted
        for r in hooks:
            h = r["headers"]
            assert signature_matches(
                HOOK_SECRET.encode(),
                h["X-Connect-Audit-Timestamp"],
                r["body"],
                h["X-Connect-Audit-Signature"],
            )
            assert not signature_matches(
                b"another key", h["X-Connect-Audit-Timestamp"], r["body"], h["X-Connect-Audit-Signature"]
            )
            body = json.loads(r["body"])
            assert (
                body["alert_id"] == h["X-Connect-Audit-Alert-Id"] and body["highlight"]["severity"] == "high"
            )
            assert set(body["highlight"]) >= {"kind", "tenant", "first_seen", "summary", "filter"}
        assert len(slack) == len(wanted)
        texts = [json.loads(r["body"])["text"] for r in slack]
        assert all(t.startswith("[high] ") for t in texts)
        assert any("incoming tokens rejected" in t for t in texts)
        # Each delivery is in the log; a second run sends nothing again.
        assert len(stored(store, "alert_delivered")) == 2 * len(wanted)
        again = alerter(store, receiver).run_once(since=SINCE, now=NOW)
        assert again.delivered == [] and again.already == 2 * len(wanted)
        assert len(receiver.requests) == 2 * len(wanted)  # nothing sent twice


def test_a_failing_then_recovering_receiver_gets_every_alert_once_after_backoff(sqlite_url, receiver):
    rules = '[[rules]]\nseverities = ["high"]\nkinds = ["rejections_above_baseline"]\nto = ["ops"]\n'
    receiver.script = [503, 500, 429]  # three failures, then it recovers
    sleeps: list[float] = []
    with fill(sqlite_url, anomalies=True) as store:
        report = alerter(store, receiver, rules=rules, sleeps=sleeps, backoff=1.0).run_once(
            since=SINCE, now=NOW
        )
        assert [d["attempts"] for d in report.delivered] == [4] and not report.failed
        assert sleeps == [1.0, 2.0, 4.0]  # doubling between attempts
        assert len(receiver.requests) == 4
        assert len({r["body"] for r in receiver.requests}) == 1  # the same alert, tried again
        assert stored(store, "alert_failed") == []


def test_a_receiver_down_for_a_whole_run_gets_the_alert_on_the_next(sqlite_url, receiver):
    rules = '[[rules]]\nkinds = ["rejections_above_baseline"]\nto = ["ops"]\n'
    receiver.script = [500, 500]
    with fill(sqlite_url, anomalies=True) as store:
        first = alerter(store, receiver, rules=rules, attempts=2, backoff=0).run_once(since=SINCE, now=NOW)
        assert (
            first.delivered == [] and first.failed[0]["problem"] == "the receiver answered 500 (2 attempts)"
        )
        [failure] = stored(store, "alert_failed")
        assert failure["outcome"] == "error" and "not sent to ops (http://127.0.0.1/…)" in failure["detail"]
        second = alerter(store, receiver, rules=rules, attempts=2, backoff=0).run_once(since=SINCE, now=NOW)
        assert len(second.delivered) == 1 and second.already == 0  # at least once: sent now
        assert len(stored(store, "alert_delivered")) == 1


def test_a_refusal_is_not_retried_and_an_unreachable_receiver_is_said_plainly(sqlite_url, receiver):
    rules = '[[rules]]\nkinds = ["rejections_above_baseline"]\nto = ["ops"]\n'
    receiver.script = [400]
    with fill(sqlite_url, anomalies=True) as store:
        report = alerter(store, receiver, rules=rules).run_once(since=SINCE, now=NOW)
        assert report.failed[0]["attempts"] == 1 and report.failed[0]["status"] == 400
        receiver.close()  # nobody listens any more
        gone = alerter(store, receiver, rules=rules, attempts=2, backoff=0).run_once(since=SINCE, now=NOW)
        assert gone.failed[0]["problem"] == "the receiver could not be reached (2 attempts)"


def test_no_secret_of_a_destination_reaches_the_log_the_store_or_the_output(
    sqlite_url, receiver, caplog, tmp_path
):
    receiver.script = [500] * 10  # failures are where URLs leak, in exception messages
    caplog.set_level(logging.DEBUG)
    with fill(sqlite_url, anomalies=True) as store:
        alerter(store, receiver, attempts=2, backoff=0).run_once(since=SINCE, now=NOW)
        receiver.close()
        alerter(store, receiver, attempts=1, backoff=0).run_once(since=SINCE, now=NOW)
        with store.engine.connect() as conn:
            rows = [str(tuple(r)) for r in conn.exec_driver_sql("SELECT * FROM audit_events")]
    config = tmp_path / "alerts.toml"
    config.write_text(config_text(receiver))
    env = {**env_for_child(tmp_path), **env_for(receiver)}
    cli = subprocess.run(
        [*alerts_once(config, sqlite_url), "--attempts", "2", "--backoff", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert cli.returncode == 1 and "NOT sent" in cli.stdout  # the receiver is gone
    seen = "\n".join([*rows, caplog.text, cli.stdout, cli.stderr])
    assert "alert_failed" in seen and "127.0.0.1" in seen
    for secret in (
        HOOK_SECRET,
        "url-secret-must-not-leak",
        SLACK_TOKEN,
        "slacktokenmustnotleak",
        "/hooks/audit",
    ):
        assert secret not in seen, secret


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[destinations.ops\n", "is not valid TOML"),
        ("", "names no destination"),
        (
            '[destinations.ops]\ntype = "pager"\nurl = "https://x.example"\n',
            "type must be one of webhook, slack",
        ),
        ('[destinations.ops]\ntype = "webhook"\n', "needs url or url_env"),
        ('[destinations.ops]\ntype = "webhook"\nurl = "http://hooks.example.com/x"\n', "must be https"),
        (
            '[destinations.ops]\ntype = "webhook"\nurl_env = "NOT_SET_ANYWHERE"\n',
            "the environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            SLACK_OK + '[[rules]]\nto = ["pager"]\n',
            "rule 1 sends to pager, which no [destinations.*] names",
        ),
        (
            SLACK_OK + '[[rules]]\nseverities = ["urgent"]\n',
            "unknown severity 'urgent'; use high, medium, low",
        ),
    ],
)
def test_a_wrong_configuration_says_what_is_wrong(text, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        AlertConfig.parse(text, env={})


def test_without_rules_every_high_highlight_goes_everywhere():
    config = AlertConfig.parse(
        '[destinations.a]\ntype = "slack"\nurl = "https://hooks.slack.com/x"\n'
        '[destinations.b]\ntype = "webhook"\nurl = "https://h.example/y"\n',
        env={},
    )
    [rule] = config.rules
    assert rule.severities == ("high",) and rule.to == ("a", "b") and not rule.kinds
    assert "hooks.slack.com/x" not in repr(config)  # the URL is a secret: not in a repr either


def test_the_command_sends_once_then_reports_what_was_sent_before(sqlite_url, receiver, tmp_path):
    fill(sqlite_url, anomalies=True).close()
    config = tmp_path / "alerts.toml"
    config.write_text(config_text(receiver))
    env = {**env_for_child(tmp_path), **env_for(receiver)}
    command = alerts_once(config, sqlite_url)
    first = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["failed"] == [] and len(report["delivered"]) >= 8
    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert dry.returncode == 0 and dry.stdout.count("sent before") == len(report["delivered"])
    assert "would send" not in dry.stdout
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0 and second.stdout.strip().endswith(
        f"0 sent, 0 failed, {len(report['delivered'])} sent before"
    )
    missing = subprocess.run(
        [sys.executable, "-m", "collector.cli", "alerts", "--once", "--database", sqlite_url],
        capture_output=True,
        text=True,
        env={**env, "CONNECT_AUDIT_ALERTS": ""},
        timeout=60,
    )
    assert missing.returncode == 2 and "no alert configuration" in missing.stderr


def test_the_documented_example_configuration_loads():
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "docs" / "examples" / "alerts.toml"
    env = {"SECURITY_WEBHOOK_URL": "https://security.example.com/hooks/audit",
           "SECURITY_WEBHOOK_SECRET": "s3cret", "TEAM_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/x"}
    config = AlertConfig.load(example, env=env)
    assert set(config.destinations) == {"security", "team"}
    assert [r.name for r in config.rules] == ["high severities", "new powers"]
    assert config.rules[0].to == ("security", "team") and config.rules[1].to == ("team",)
    assert config.destinations["security"].secret == b"s3cret"
