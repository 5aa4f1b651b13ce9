"""Files only their owner can read, whatever the umask: the store, its WAL and SHM, spill files,
key files, exports and their directories (the review found them all created 0644)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from storekit import record

from collector import cli
from collector.installs import InstallRegistry
from collector.recorder import Recorder
from collector.store import Store

pytestmark = pytest.mark.usefixtures("isolated_keys")


INSTALL = {"key": "app", "clientKey": "ck", "baseUrl": "https://a.atlassian.net/wiki",
           "sharedSecret": "s" * 32}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(value: int):
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_new_store_its_wal_shm_and_key_files_are_private_under_umask_022(tmp_path):
    home = tmp_path / "fresh" / "data"
    with umask(0o022), Store.open(f"sqlite:///{home / 'audit.db'}") as store:
        InstallRegistry(store).apply_lifecycle("installed", INSTALL)
        with Recorder(store, checkpoint_every=1) as rec:
            rec.write_now(record(1))
        names = {p.name: mode(p) for p in home.iterdir()}
    assert {"audit.db", "audit.db-wal", "audit.db-shm", "audit.key", "checkpoint.key"} <= set(names)
    assert set(names.values()) == {0o600}, names
    assert mode(home) == 0o700 and mode(home.parent) == 0o700


def test_spill_files_are_private(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with umask(0o022), Store.open(url, lock_timeout=0.1) as store:
        blocker = sqlite3.connect(store.url, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the store is unavailable to writers: events spill
        try:
            rec = Recorder(store, spill_dir=tmp_path / "spill").start()
            rec.record(record(2))
            assert rec.flush(timeout=30)
            rec.close(timeout=5)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        [spill] = rec.spill_files()
    assert mode(spill) == 0o600 and mode(spill.parent) == 0o700


def test_an_export_is_private_even_over_an_existing_world_readable_file(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with Store.open(url) as store, Recorder(store) as rec:
        rec.write_now(record(3))
    target = tmp_path / "out" / "events.csv"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o644)
    with umask(0o022):
        assert cli.main(["export", "--database", url, "--output", str(target)]) == 0
    assert mode(target) == 0o600 and "event_id" in target.read_text()


def test_opening_a_store_that_others_can_read_warns_once_with_the_fix(tmp_path, caplog):
    path = tmp_path / "audit.db"
    with Store.open(f"sqlite:///{path}"):
        pass
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="collector.files"):
        for _ in range(2):
            with Store.open(f"sqlite:///{path}"):
                pass
    warnings = [r.getMessage() for r in caplog.records if r.name == "collector.files"]
    assert len(warnings) == 1
    assert "open to other users (mode 0644)" in warnings[0] and f"chmod 600 {path}*" in warnings[0]
    assert mode(path) == 0o644  # reported, not changed behind the owner's back


def test_the_key_directory_can_live_off_the_data_volume(tmp_path, monkeypatch):
    keys = tmp_path / "secrets" / "connect-audit"
    monkeypatch.setenv("CONNECT_AUDIT_KEY_DIR", str(keys))
    with umask(0o022), Store.open(f"sqlite:///{tmp_path / 'data' / 'audit.db'}") as store:
        InstallRegistry(store).apply_lifecycle("installed", INSTALL)
        assert store.key_dir == keys and store.home == tmp_path / "data"
    assert mode(keys / "audit.key") == 0o600 and mode(keys) == 0o700
    assert not (tmp_path / "data" / "audit.key").exists()
