"""``make run``'s last step, ``python -m dashboard.serve``: Streamlit starts, then the address, the
account and the password are the last lines on the screen, and they work."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from collector.store import Store
from dashboard import auth, serve

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _start(tmp_path: Path, port: int = 0, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k != auth.ADMIN_PASSWORD_ENV}
    environ.update({"CONNECT_AUDIT_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}", **env})
    return subprocess.Popen(
        [sys.executable, "-m", "dashboard.serve", "--server.address", "127.0.0.1",
         "--server.port", str(port)],
        cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _until_ready(proc: subprocess.Popen) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "Ctrl+C stops it." in line:
            return lines
    pytest.fail("no ready block:\n" + "\n".join(lines))


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_last_lines_are_the_address_account_and_a_password_that_works(tmp_path):
    Store.open(f"sqlite:///{tmp_path / 'audit.db'}").close()
    proc = _start(tmp_path)  # port 0: the server picks a free one and says which
    try:
        lines = [line for line in _until_ready(proc) if line.strip()]
        assert "Streamlit" in "\n".join(lines[:-5]) or "URL:" in "\n".join(lines[:-5])  # its own lines first
        opened, account, password, stop = (line.strip() for line in lines[-4:])
        assert lines[-5].strip() == "Connect Audit is running."
        assert re.fullmatch(r"Open:     http://127\.0\.0\.1:\d+", opened)
        assert account == "Account:  admin" and stop == "Ctrl+C stops it."
        secret = re.match(r"Password: (\S+)   \(generated now", password).group(1)
        base = opened.split()[-1]
        signed = requests.post(f"{base}/-/sign-in", data={"account": "admin", "password": secret},
                               headers={"Origin": base}, allow_redirects=False, timeout=30)
        assert signed.status_code == 303
    finally:
        assert _stop(proc) == 0
    # Started again: the password is not shown twice, only where it came from.
    proc = _start(tmp_path)
    try:
        assert "set earlier" in _until_ready(proc)[-3]
    finally:
        _stop(proc)


def test_a_password_from_the_environment_is_named_not_shown():
    assert serve.password_line(None).startswith("Password: the one set earlier")
    os.environ[auth.ADMIN_PASSWORD_ENV] = "chosen by the operator"
    try:
        line = serve.password_line(None)
    finally:
        del os.environ[auth.ADMIN_PASSWORD_ENV]
    assert line == f"Password: the value of {auth.ADMIN_PASSWORD_ENV}" and "chosen" not in line
