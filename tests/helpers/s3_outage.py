"""Object-store outages for tests: a moto S3 server process of one's own (stopped and started again on the same
port), and a TCP proxy in front of a server that can refuse connections for a while and then accept them again,
with the server's objects intact.

Both are real network failures as a client sees them: ``connection refused`` on the endpoint's port.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

CREDENTIALS = {
    'AWS_ACCESS_KEY_ID': 'testing',
    'AWS_SECRET_ACCESS_KEY': 'testing',
    'AWS_SESSION_TOKEN': 'testing',
    'AWS_DEFAULT_REGION': 'us-east-1',
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def s3_env(endpoint: str) -> dict[str, str]:
    """The variables that point boto3, streaming and Composer at ``endpoint`` with dummy credentials."""
    return {'S3_ENDPOINT_URL': endpoint, 'AWS_ENDPOINT_URL': endpoint, **CREDENTIALS}


def refuses(port: int) -> bool:
    """True when nothing accepts connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(('127.0.0.1', port)) != 0


class MotoServer:
    """``python -m moto.server`` on a fixed loopback port; ``stop()`` kills it (its objects are gone), ``start()``
    starts a fresh, empty one on the same port."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, Path(log)
        self.endpoint = f'http://127.0.0.1:{port}'
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        with open(self.log, 'ab') as fh:
            self.proc = subprocess.Popen(
                [sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(self.port)],
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + '/moto-api/', timeout=1)
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    tail = self.log.read_text()[-2000:]
                    raise RuntimeError(f'moto did not start on {self.endpoint}: {tail}') from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    def client(self):
        import boto3

        return boto3.client('s3', endpoint_url=self.endpoint, region_name='us-east-1', **_lower(CREDENTIALS))

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def _lower(creds: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in creds.items() if k != 'AWS_DEFAULT_REGION'}


class StoreProxy:
    """A TCP forwarder 127.0.0.1:port -> ``target_port``. ``down()`` closes the listening socket and every open
    connection (clients then get ``connection refused``; a request in flight on an open connection is cut, as when
    the store goes away mid-transfer); ``up()`` listens on the same port again. ``forwarded`` counts the bytes sent
    on from clients to the server (all connections)."""

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port = target_port
        self.port = port or free_port()
        self.endpoint = f'http://127.0.0.1:{self.port}'
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.forwarded = 0

    def up(self) -> StoreProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(('127.0.0.1', self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)  # shutdown() wakes the thread blocked in accept() (Linux)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            _close(conn)
        deadline = time.monotonic() + 10
        while not refuses(self.port):
            assert time.monotonic() < deadline, f'port {self.port} still accepts connections'
            time.sleep(0.05)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(('127.0.0.1', self.target_port))
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=_pipe, args=(client, server, self._count), daemon=True).start()
            threading.Thread(target=_pipe, args=(server, client), daemon=True).start()

    def _count(self, n: int) -> None:
        with self._lock:
            self.forwarded += n


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _pipe(src: socket.socket, dst: socket.socket, count=None) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
            if count is not None:
                count(len(data))
    except OSError:
        pass
    finally:
        _close(dst)


def wait_until(predicate, timeout: float, what: str, proc=None) -> None:
    """Poll ``predicate`` every 50 ms; fail after ``timeout`` s, or at once when ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ''
            raise AssertionError(f'process ended before {what}: {str(out)[-3000:]}')
        assert time.monotonic() < deadline, f'{what}: not within {timeout} s'
        time.sleep(0.05)
