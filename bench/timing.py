"""Latency statistics and the bench's HTTP client.

The client keeps one HTTP/1.1 connection per thread (what any real client library does), so
a cached answer's figure is the API's cost, not a TCP handshake's.
"""

from __future__ import annotations

import http.client
import json
import socket
import statistics
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from cluster.errors import ShardqaError
from gears.asker import DEFAULT_K


class ApiError(ShardqaError):
    """The API answered with an error status during the bench (``ms``: how long it took)."""

    def __init__(self, message: str, ms: float = 0.0):
        super().__init__(message)
        self.ms = ms


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


class LeanHttpClient:
    """GET over one kept-alive socket: the request bytes written once, the response framed by
    its Content-Length alone, as wrk or curl do. Python's http.client parses every response's
    headers with the email package, a cost of the Python client and not of the server, so
    the cached-answer goal is judged with this client (both figures are reported)."""

    def __init__(self, url: str, timeout: float = 10):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request_bytes(self, path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()

    def get(self, request: bytes) -> tuple[float, int, bytes]:
        """(milliseconds from the first byte sent to the last byte of the body, status, body)."""
        t0 = time.perf_counter()
        self.sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the API closed the connection")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the API closed the connection")
            body += chunk
        ms = (time.perf_counter() - t0) * 1000
        return ms, int(head.split(b" ", 2)[1]), body

    def close(self) -> None:
        self.sock.close()


class ApiClient:
    """GET /qa over a kept-alive connection, one connection per calling thread."""

    def __init__(self, url: str, timeout: float = 60, token: str | None = None):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def get(self, question: str, k: int = DEFAULT_K) -> tuple[float, int, dict]:
        """(milliseconds from request to parsed body, status, body), whatever the status; a
        kept-alive connection the server dropped is opened again once."""
        path = "/qa?" + urllib.parse.urlencode({"q": question, "k": k})
        for attempt in range(2):
            conn = self._conn()
            t0 = time.perf_counter()
            try:
                conn.request("GET", path, headers=self.headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            return (time.perf_counter() - t0) * 1000, resp.status, json.loads(raw)
        raise AssertionError("unreachable")

    def ask(self, question: str, k: int = DEFAULT_K) -> tuple[float, dict]:
        """(milliseconds from request to parsed body, body); ApiError unless 200."""
        ms, status, body = self.get(question, k)
        if status != 200:
            raise ApiError(f"the API answered {status}: {body.get('error', body)}", ms=ms)
        return ms, body


def run_concurrent(work, items: list, concurrency: int) -> tuple[list, float]:
    """``work(item)`` for every item with ``concurrency`` threads; (results in item order,
    wall seconds)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(work, items))
    return results, time.perf_counter() - t0


def ask_or_error(api: ApiClient, question: str, k: int) -> tuple[float, dict]:
    """Like ``api.ask``, but a failed question (e.g. 503 when the shards are saturated) is a
    result, not the end of the run: its time to failure and ``{"error": ...}``."""
    try:
        return api.ask(question, k)
    except ApiError as exc:
        return exc.ms, {"error": str(exc), "answer": None}
