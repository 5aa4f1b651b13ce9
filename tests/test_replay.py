"""The store-backed replay guard: atomic first use across threads and processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta

import pytest
from storekit import count, env_for_child

from collector.replay import StoreReplayGuard
from collector.store import Store
from collector.tokens import ReplayGuard

# Key files under the test's own directory; `store` (conftest) opens `database_url`.
pytestmark = pytest.mark.usefixtures("isolated_keys")


def soon(minutes: float = 3) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def test_first_use_then_replay(store):
    guard = StoreReplayGuard(store)
    assert isinstance(guard, ReplayGuard)
    assert guard.first_use("ck-1", "a" * 64, soon()) is True
    assert guard.first_use("ck-1", "a" * 64, soon()) is False
    assert guard.first_use("ck-2", "a" * 64, soon()) is True  # keyed by issuer too
    assert guard.first_use("ck-1", "b" * 64, soon()) is True


def test_a_key_whose_token_expired_can_be_taken_again_and_is_purged(store):
    guard = StoreReplayGuard(store)
    past = datetime.now(UTC) - timedelta(seconds=1)
    assert guard.first_use("ck-1", "c" * 64, past)
    assert guard.first_use("ck-1", "c" * 64, soon())  # the stale row does not block a new token
    assert not guard.first_use("ck-1", "c" * 64, soon())
    assert guard.first_use("ck-1", "d" * 64, past)
    assert guard.purge_expired() == 1
    assert count(store, "replay_keys") == 1


def test_expired_keys_are_purged_periodically_by_first_use(store):
    guard = StoreReplayGuard(store, purge_interval=0)
    guard.first_use("ck-1", "e" * 64, datetime.now(UTC) - timedelta(minutes=5))
    guard.first_use("ck-1", "f" * 64, soon())
    assert count(store, "replay_keys") == 1


def test_naive_expiry_is_refused(store):
    with pytest.raises(ValueError, match="timezone-aware"):
        StoreReplayGuard(store).first_use("ck", "x", datetime.now())


def test_racing_threads_let_exactly_one_through(store):
    guard = StoreReplayGuard(store)
    barrier = threading.Barrier(8)
    results = []

    def attempt():
        barrier.wait()
        results.append(guard.first_use("ck-1", "race" * 16, soon()))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


@pytest.mark.slow
def test_racing_processes_let_exactly_one_through_per_token(database_url, tmp_path):
    Store.open(database_url).close()
    script = textwrap.dedent(
        f"""
        import sys
        from datetime import UTC, datetime, timedelta
        from collector.replay import StoreReplayGuard
        from collector.store import Store
        store = Store.open({database_url!r})
        guard = StoreReplayGuard(store)
        expires = datetime.now(UTC) + timedelta(minutes=3)
        won = sum(guard.first_use("ck", f"token-{{i}}", expires) for i in range(40))
        print(won)
        """
    )
    env = env_for_child(tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    wins = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(wins) == 40  # each of the 40 tokens was accepted by exactly one process


def test_the_guard_keeps_the_verifiers_time_not_the_wall_clock(store):
    # Under a simulated clock a month back (the demo), a token still inside its lifetime by
    # that clock is remembered: a replay of it is caught, though its expiry is long past by
    # the wall clock.
    month_ago = datetime.now(UTC) - timedelta(days=30)
    guard = StoreReplayGuard(store, purge_interval=0, clock=lambda: month_ago.timestamp())
    expires = month_ago + timedelta(minutes=3)
    assert guard.first_use("ck-1", "g" * 64, expires) is True
    assert guard.first_use("ck-1", "g" * 64, expires) is False
    assert count(store, "replay_keys") == 1
