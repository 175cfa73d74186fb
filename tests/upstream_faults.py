"""Upstreams that fail below HTTP, each in one way, on loopback: for the tests that check a
failure is named for its cause (tests/e2e/test_upstream_causes.py)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Self

Behaviour = Callable[[socket.socket], None]


def silent(conn: socket.socket) -> None:
    """Accept and never say a word (nor read): a TLS handshake waits for ever."""
    time.sleep(3)


def reads_and_waits(conn: socket.socket) -> None:
    """Read the request, never answer."""
    conn.recv(65536)
    time.sleep(3)


def reads_and_resets(conn: socket.socket) -> None:
    """Read the request, then reset the connection (SO_LINGER 0: close sends an RST)."""
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def answers_garbage(conn: socket.socket) -> None:
    """Read the request, answer something that is not HTTP."""
    conn.recv(65536)
    conn.sendall(b"SSH-2.0-OpenSSH_9.6 not an http server\r\n\r\n")
    time.sleep(0.5)


class FaultServer:
    """A loopback TCP server handing each connection to `behaviour` in its own thread, then
    closing it; stopped (and its threads joined) on exit."""

    def __init__(self, behaviour: Behaviour, scheme: str = "http") -> None:
        self._behaviour = behaviour
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.url = f"{scheme}://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            self._behaviour(conn)

    def __enter__(self) -> Self:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        self._sock.close()
