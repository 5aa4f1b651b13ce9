"""The store commands end to end: generate, verify, purge (exit codes, output, effects)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from storekit import count, env_for_child, isolate_keys, records, tamper

from collector import chain
from collector.cli import main
from collector.commands._support import ProgressBar
from collector.errors import REJECTION_CODES
from collector.installs import InstallRegistry
from collector.recorder import Recorder
from collector.store import Store


@pytest.fixture(autouse=True)
def _keys(monkeypatch, tmp_path):
    isolate_keys(monkeypatch, tmp_path)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fill(url: str, n: int, **kw) -> None:
    with Store.open(url) as store, Recorder(store) as rec:
        for r in records(n, **kw):
            rec.record(r)


# ---------------------------------------------------------------------- generate


@pytest.mark.slow
def test_generate_writes_realistic_verifiable_events(capsys, sqlite_url):
    code, _, err = cli(
        capsys,
        "generate",
        "--database",
        sqlite_url,
        "--events",
        "4000",
        "--tenants",
        "8",
        "--days",
        "10",
        "--seed",
        "3",
    )
    assert code == 0, err
    assert "generate: [" in err and "generated 4000 events for 8 tenants over 10 days" in err
    with Store.open(sqlite_url) as store:
        assert count(store) == 4000
        installs = InstallRegistry(store).list_installs()
        assert len(installs) == 8 and sorted(i.status for i in installs).count("uninstalled") == 1
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT direction, identity_kind, outcome, reason, status, tenant_client_key, ts, "
                "account_id, path, required_scope FROM audit_events"
            ).all()
        assert chain.verify(store).ok
    n = len(rows)
    by = lambda i: Counter(r[i] for r in rows)  # noqa: E731
    assert {"incoming", "outgoing", "lifecycle"} <= set(by(0))
    assert 0.05 < by(1)["user"] / n < 0.16  # about 10% of the calls act as users
    assert all(r[7] for r in rows if r[1] == "user")
    assert 0.01 < by(2)["denied"] / n < 0.08 and 0.005 < by(2)["rejected"] / n < 0.06
    reasons = {r[3] for r in rows if r[2] == "rejected"}
    assert reasons and reasons <= set(REJECTION_CODES)
    assert {r[3] for r in rows if r[2] == "denied"} <= {"scope", "permission"}
    assert all(r[4] == 403 for r in rows if r[2] == "denied")
    sizes = sorted(by(5).values(), reverse=True)
    assert sizes[0] > 4 * sizes[-1]  # Zipf-like: one big tenant, a long tail
    assert any(r[9] == "WRITE" for r in rows) and any(
        r[8] and "/wiki/rest/api/content/" in r[8] for r in rows
    )


@pytest.mark.slow
def test_generate_spreads_events_over_the_days_and_is_reproducible(capsys, tmp_path):
    urls = [f"sqlite:///{tmp_path / name / 'audit.db'}" for name in ("a", "b")]
    for url in urls:
        assert (
            cli(capsys, "generate", "--database", url, "--events", "600", "--days", "3", "--seed", "9")[0]
            == 0
        )
    ids = []
    for url in urls:
        with Store.open(url) as store, store.session() as session:
            from sqlmodel import select

            from collector.models import AuditEvent

            events = session.exec(select(AuditEvent).order_by(AuditEvent.seq)).all()
            ids.append([e.event_id for e in events])
            stamps = [e.ts for e in events if e.direction != "lifecycle"]
    assert ids[0] == ids[1]
    now = datetime.now(UTC)
    assert min(stamps) >= now - timedelta(days=3, minutes=5) and max(stamps) <= now
    assert max(stamps) - min(stamps) > timedelta(days=2)
    assert stamps == sorted(stamps)  # written in time order, as a live store would be


def test_generate_requires_a_database_and_a_count(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--events", "10"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["generate", "--database", "sqlite:///x.db", "--events", "ten"])
    assert "is not a whole number" in capsys.readouterr().err


# ---------------------------------------------------------------------- verify


def test_verify_exit_codes_and_output(capsys, sqlite_url):
    fill(sqlite_url, 30)
    code, out, _ = cli(capsys, "verify", "--database", sqlite_url)
    assert code == 0 and out.startswith("chain intact: 30 events checked")
    code, out, _ = cli(capsys, "verify", "--database", sqlite_url, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["events_checked"] == 30
    assert report["last_checkpoint"]["seq"] == 30
    with Store.open(sqlite_url) as store:
        tamper(store, "UPDATE audit_events SET account_id = 'mallory' WHERE seq = 17")
    code, out, _ = cli(capsys, "verify", "--database", sqlite_url)
    assert code == 1
    assert out.strip() == (
        "chain BROKEN at seq 17 (event e-0000016): "
        "event seq 17 was altered: its content does not match its hash"
    )
    code, out, _ = cli(capsys, "verify", "--database", sqlite_url, "--json")
    assert code == 1 and json.loads(out)["first_bad_event_id"] == "e-0000016"


def test_verify_on_postgresql(capsys, pg_url):
    fill(pg_url, 12)
    code, out, _ = cli(capsys, "verify", "--database", pg_url)
    assert code == 0 and "12 events checked" in out
    with Store.open(pg_url) as store:
        tamper(store, "DELETE FROM audit_events WHERE seq = 5")
    assert cli(capsys, "verify", "--database", pg_url)[0] == 1


def test_verify_of_a_missing_store_is_a_configuration_error(capsys, tmp_path):
    code, out, err = cli(capsys, "verify", "--database", f"sqlite:///{tmp_path / 'none.db'}")
    assert code == 2 and out == ""
    assert err.strip() == f"connect-audit: error: no audit store at {tmp_path / 'none.db'}"


def test_verify_from_the_environment_url(capsys, sqlite_url, monkeypatch):
    fill(sqlite_url, 3)
    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", sqlite_url)
    assert cli(capsys, "verify")[0] == 0


@pytest.mark.slow
def test_a_bad_url_from_a_real_process_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector.cli",
            "verify",
            "--database",
            "postgresql://me:pw-xyz@127.0.0.1:1/db",
        ],
        env=env_for_child(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and "pw-xyz" not in result.stderr
    )
    assert result.stderr.startswith("connect-audit: error: cannot reach PostgreSQL at 127.0.0.1:1/db")


# ---------------------------------------------------------------------- purge


def test_purge_with_yes_removes_old_events_and_keeps_the_chain_verifiable(capsys, sqlite_url):
    now = datetime.now(UTC)
    fill(sqlite_url, 10, start=now - timedelta(days=60), step=timedelta(days=1), prefix="old")
    fill(sqlite_url, 5, start=now - timedelta(days=5), step=timedelta(hours=1), prefix="new")
    code, out, err = cli(capsys, "purge", "--older-than", "30", "--database", sqlite_url, "--yes")
    assert code == 0, err
    assert "are older than 30 days" in err
    assert out.startswith("purged 10 events (seq up to 10); recorded as purge event ")
    assert cli(capsys, "verify", "--database", sqlite_url)[0] == 0
    with Store.open(sqlite_url) as store:
        assert count(store) == 6
    code, out, _ = cli(capsys, "purge", "--older-than", "30", "--database", sqlite_url, "--yes")
    assert code == 0 and out.startswith("nothing to purge")


def test_purge_without_yes_needs_a_terminal(capsys, sqlite_url, monkeypatch):
    fill(sqlite_url, 4, start=datetime.now(UTC) - timedelta(days=90))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, _, err = cli(capsys, "purge", "--older-than", "30", "--database", sqlite_url)
    assert code == 2
    assert err.strip().endswith("refusing to purge without --yes when standard input is not a terminal")
    with Store.open(sqlite_url) as store:
        assert count(store) == 4


def test_purge_asks_on_a_terminal(capsys, sqlite_url, monkeypatch):
    fill(sqlite_url, 4, start=datetime.now(UTC) - timedelta(days=90))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, _, err = cli(capsys, "purge", "--older-than", "30", "--database", sqlite_url)
    assert code == 1 and "purge cancelled" in err
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert cli(capsys, "purge", "--older-than", "30", "--database", sqlite_url)[0] == 0
    with Store.open(sqlite_url) as store:
        assert count(store) == 1  # the purge event


@pytest.mark.parametrize("days", ["0", "-3", "soon", "nan"])
def test_purge_refuses_a_non_positive_age(capsys, days, sqlite_url):
    with pytest.raises(SystemExit) as info:
        main(["purge", "--older-than", days, "--database", sqlite_url, "--yes"])
    assert info.value.code == 2
    assert "days" in capsys.readouterr().err


# ---------------------------------------------------------------------- progress bar


def test_progress_bar_redraws_on_a_terminal_and_prints_tenths_elsewhere():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain = io.StringIO()
    bar = ProgressBar("verify", 100, stream=plain)
    for i in range(0, 101, 5):
        bar.update(i)
    bar.finish()
    lines = plain.getvalue().splitlines()
    assert 9 <= len(lines) <= 11 and lines[-1].startswith("verify: [###") and "100/100 events" in lines[-1]
    tty = Tty()
    bar = ProgressBar("generate", 10, stream=tty)
    bar.update(3)
    bar.finish()
    drawn = tty.getvalue()
    # Redrawn in place: carriage returns, a single newline at the very end.
    assert drawn.startswith("\rgenerate: [") and drawn.count("\r") == 2
    assert drawn.endswith("\n") and "\n" not in drawn[:-1] and "3/10 events" in drawn


def test_generate_into_postgresql(capsys, pg_url):
    code, _, err = cli(
        capsys, "generate", "--database", pg_url, "--events", "400", "--tenants", "3", "--days", "2"
    )
    assert code == 0, err
    with Store.open(pg_url) as store:
        assert count(store) == 400 and len(InstallRegistry(store).list_installs()) == 3
    assert cli(capsys, "verify", "--database", pg_url)[0] == 0
