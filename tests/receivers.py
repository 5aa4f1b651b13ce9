"""Loopback receivers for the forwarding tests, run as processes of their own so that a test
can kill one with SIGKILL and start it again: ``python tests/receivers.py KIND PORT OUT [...]``.

- ``hec``: checks each request as Splunk's HTTP Event Collector would (path, the
  ``Authorization: Splunk <token>`` header, a body of concatenated JSON event objects each
  with ``event`` and a numeric ``time``) and answers as HEC does;
- ``otlp``: decodes the OTLP/HTTP protobuf body (``ExportLogsServiceRequest``) and answers
  with an ``ExportLogsServiceResponse``.

Each accepted event is appended to OUT as one JSON line and fsync'd *before* the answer, so
what the file holds is exactly what the receiver acknowledged. ``--busy N`` answers the first
N requests 503 (HEC's "server is busy"); ``--tls CERT KEY`` serves HTTPS.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEC_PATH = "/services/collector/event"


class Receiver(BaseHTTPRequestHandler):
    kind = "hec"
    out_path = ""
    token = ""
    busy = 0
    lock = threading.Lock()
    seen = 0

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _hec(self, status: int, text: str, code: int) -> None:
        self._answer(status, json.dumps({"text": text, "code": code}).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with Receiver.lock:
            Receiver.seen += 1
            if Receiver.seen <= Receiver.busy:
                return self._hec(503, "Server is busy", 9)
        if self.kind == "hec":
            return self._receive_hec(body)
        return self._receive_otlp(body)

    def _receive_hec(self, body: bytes) -> None:
        if self.path != HEC_PATH:
            return self._hec(404, "The requested URL was not found on this server.", 404)
        auth = self.headers.get("Authorization", "")
        if not auth:
            return self._hec(401, "Token is required", 2)
        if auth != f"Splunk {self.token}":
            return self._hec(403, "Invalid token", 4)
        events, text, decoder = [], body.decode(), json.JSONDecoder()
        pos = 0
        while pos < len(text):
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                break
            try:
                item, pos = decoder.raw_decode(text, pos)
            except ValueError:
                return self._hec(400, "Invalid data format", 6)
            if not isinstance(item, dict) or "event" not in item:
                return self._hec(400, "Event field is required", 12)
            if not isinstance(item.get("time", 0), int | float):
                return self._hec(400, "Invalid data format", 6)
            events.append(item)
        if not events:
            return self._hec(400, "No data", 5)
        self._keep(events)
        self._hec(200, "Success", 0)

    def _receive_otlp(self, body: bytes) -> None:
        from google.protobuf.json_format import MessageToDict
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
            ExportLogsServiceResponse,
        )

        if self.path != "/v1/logs" or self.headers.get("Content-Type") != "application/x-protobuf":
            return self._answer(415 if self.path == "/v1/logs" else 404, b"", "text/plain")
        request = ExportLogsServiceRequest.FromString(body)
        events = []
        for resource_logs in request.resource_logs:
            resource = MessageToDict(resource_logs.resource)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    events.append(
                        {
                            "resource": resource,
                            "scope": scope_logs.scope.name,
                            "record": MessageToDict(record),
                        }
                    )
        self._keep(events)
        self._answer(200, ExportLogsServiceResponse().SerializeToString(), "application/x-protobuf")

    def _keep(self, events: list) -> None:
        with Receiver.lock, open(self.out_path, "a", encoding="utf-8") as out:
            out.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in events))
            out.flush()
            os.fsync(out.fileno())


def _drop_torn_tail(path: str) -> None:
    """A receiver killed while writing leaves half a line it never acknowledged: drop it, as a
    journal drops an unfinished record, so that the next line does not run into it."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("hec", "otlp"))
    parser.add_argument("port", type=int)
    parser.add_argument("out")
    parser.add_argument("--token", default="")
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args(argv)
    _drop_torn_tail(args.out)
    Receiver.kind, Receiver.out_path, Receiver.token, Receiver.busy = (
        args.kind,
        args.out,
        args.token,
        args.busy,
    )
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Receiver)
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*args.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
