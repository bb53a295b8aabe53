"""A throwaway redis-server for a test: its own free port, no persistence, loopback only."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest

from tests.conftest import require_tool


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RedisProc:
    def __init__(self, port: int | None = None) -> None:
        require_tool("redis-server", "the nodes coordinate through a real Redis")
        self.port = port or _free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if self.cli("PING").strip() == "PONG":
                    return
            except subprocess.SubprocessError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=timeout, check=True).stdout

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        """kill -9 and start again on the same port, empty (persistence is off)."""
        self.kill()
        self.start()

    def stall(self, seconds: float) -> subprocess.Popen:
        """`DEBUG SLEEP` in the background: Redis answers nothing for `seconds`."""
        return subprocess.Popen(["redis-cli", "-p", str(self.port), "DEBUG", "SLEEP",
                                 str(seconds)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)


@pytest.fixture
def redis_server():
    r = RedisProc()
    try:
        yield r
    finally:
        r.kill()
