"""``python -m dashboard.serve [STREAMLIT OPTIONS]``: start the dashboard and end with what to do next.

What ``make run`` calls. It makes sure the local admin account exists, starts
``streamlit run dashboard/app.py`` (passing any options on, such as ``--server.port 8600``),
waits until the server answers, then prints the address, the account and the password (or where
the password came from) as the last lines on the screen, where they do not scroll away.
Ctrl+C stops the server.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from dashboard import auth

APP = Path(__file__).resolve().with_name("app.py")
_URL = re.compile(r"(?:Local )?URL:\s*(https?://\S+)")
START_TIMEOUT = 60.0


def password_line(generated: str | None) -> str:
    """How to sign in: the password generated now, else where the password came from."""
    if generated:
        return f"Password: {generated}   (generated now; only its hash is kept)"
    if os.environ.get(auth.ADMIN_PASSWORD_ENV):
        return f"Password: the value of {auth.ADMIN_PASSWORD_ENV}"
    return "Password: the one set earlier (forgotten? python -m dashboard.auth reset admin)"


def _pump(stream, found: list[str], ready: threading.Event) -> None:
    """Echo Streamlit's output and note the first URL it prints (its port may differ from the
    one asked for when that one is taken)."""
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        match = _URL.search(line)
        if match and not found:
            found.append(match.group(1).rstrip("/"))
            ready.set()


def _healthy(url: str, proc: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:  # noqa: S310 - http(s) only
                if resp.read() == b"ok":
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def _stop_as_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    generated = auth.Accounts().ensure_admin(out=io.StringIO())  # shown below, once started
    # A service manager's SIGTERM stops the server too, as Ctrl+C does.
    signal.signal(signal.SIGTERM, _stop_as_ctrl_c)
    proc = subprocess.Popen(  # noqa: S603 - this interpreter, Streamlit, our app, the caller's options
        [sys.executable, "-m", "streamlit", "run", str(APP), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    found: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_pump, args=(proc.stdout, found, ready), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
        if found and _healthy(found[0], proc, deadline):
            time.sleep(0.2)  # let Streamlit's own start-up lines through first
            print(f"\n  Connect Audit is running.\n\n      Open:     {found[0]}\n"
                  f"      Account:  {auth.ADMIN}\n      {password_line(generated)}\n\n  Ctrl+C stops it.\n",
                  flush=True)
        elif proc.poll() is None:
            print(f"python -m dashboard.serve: the dashboard did not answer within {START_TIMEOUT:.0f} s",
                  file=sys.stderr)
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
            return 0  # stopped as asked
        except subprocess.TimeoutExpired:
            proc.kill()
            return 130


if __name__ == "__main__":
    sys.exit(main())
