"""Real receivers for the forwarding tests: Debian's rsyslog (plain TCP and TLS through its
OpenSSL driver) and the loopback HEC and OTLP receivers of ``tests/receivers.py``, each a
process of its own that a test can kill and start again on the same port."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RECEIVERS = Path(__file__).resolve().parent / "receivers.py"
RSYSLOGD = "/usr/sbin/rsyslogd"
FIELDS = ("facility", "severity", "timestamp", "hostname", "app_name", "procid", "msgid", "sd", "msg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost: (ca, cert, key) PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "connect-audit test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class _Receiver:
    """A receiver process: started by ``start()``, stopped by ``stop()`` (its ``signal``),
    a context manager; ``read()`` is what it received, ``wait_for(n)`` waits for n of it."""

    signal = signal.SIGTERM
    proc: subprocess.Popen | None = None

    def start(self):
        raise NotImplementedError

    def read(self) -> list[dict]:
        raise NotImplementedError

    def stop(self, sig: int | None = None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig or self.signal)
            self.proc.wait(15)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for(self, n: int, timeout: float = 20.0) -> list[dict]:
        return _wait(self.read, n, timeout)


class Rsyslog(_Receiver):
    """rsyslogd in the foreground on a loopback port, writing each message's parsed RFC 5424
    fields (as rsyslog itself parsed them) to one line of a file."""

    def __init__(self, directory: Path, *, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.out = self.dir / "received.log"
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "rsyslog.conf"
        self.conf.write_text(self._config(tls))

    def _config(self, tls) -> str:
        fields = "".join(
            f'  property(name="{name}"{extra}) constant(value="\\t")\n'
            for name, extra in (
                ("syslogfacility", ""),
                ("syslogseverity", ""),
                ("timereported", ' dateFormat="rfc3339"'),
                ("hostname", ""),
                ("app-name", ""),
                ("procid", ""),
                ("msgid", ""),
                ("structured-data", ""),
            )
        )
        if tls:
            ca, cert, key = tls
            head = (
                f'global(workDirectory="{self.dir}" DefaultNetstreamDriver="ossl" '
                f'DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile="{cert}" '
                f'DefaultNetstreamDriverKeyFile="{key}")\n'
                'module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" '
                'StreamDriver.AuthMode="anon")\n'
            )
        else:
            head = f'global(workDirectory="{self.dir}")\nmodule(load="imtcp")\n'
        return (
            head + f'input(type="imtcp" port="{self.port}" address="127.0.0.1")\n'
            'template(name="fields" type="list") {\n'
            + fields
            + '  property(name="msg" droplastlf="on") constant(value="\\n")\n}\n'
            f'action(type="omfile" file="{self.out}" template="fields")\n'
        )

    def start(self) -> Rsyslog:
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.dir / "pid")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr", "ab"),  # noqa: SIM115 (the process keeps it)
        )
        wait_listening(self.port)
        return self

    def read(self) -> list[dict]:
        """Each message's fields, as rsyslog parsed them."""
        if not self.out.exists():
            return []
        lines = self.out.read_text(encoding="utf-8").splitlines()
        return [dict(zip(FIELDS, line.split("\t", len(FIELDS) - 1), strict=True)) for line in lines]


class ReceiverProcess(_Receiver):
    """``tests/receivers.py`` as a process, stopped with SIGKILL: what it acknowledged is ``read()``."""

    signal = signal.SIGKILL

    def __init__(
        self,
        kind: str,
        directory: Path,
        *,
        token: str = "",
        busy: int = 0,
        tls: tuple[Path, Path] | None = None,
        port: int | None = None,
    ) -> None:
        self.kind, self.token, self.busy, self.tls = kind, token, busy, tls
        self.port = port or free_port()
        self.out = directory / f"{kind}-received.jsonl"
    def start(self) -> ReceiverProcess:
        cmd = [
            sys.executable,
            str(RECEIVERS),
            self.kind,
            str(self.port),
            str(self.out),
            "--token",
            self.token,
            "--busy",
            str(self.busy),
        ]
        if self.tls:
            cmd += ["--tls", *map(str, self.tls)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout.readline().strip() == b"ready"
        return self

    def read(self) -> list[dict]:
        if not self.out.exists():
            return []
        text = self.out.read_text(encoding="utf-8")
        # A line is the receiver's only once it is whole (one being written, or torn by a kill
        # and dropped at the restart, was never acknowledged).
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def _wait(read, n: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
