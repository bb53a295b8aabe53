"""Unit tests are pure: while a test in tests/unit runs, opening an internet socket, starting a
thread or starting a process fails the test. Anything that needs them belongs in
tests/integration/ (real sockets on loopback, real processes).

Fixtures may still prepare files (ffmpeg transcodes media once per session, before any test
call); only the test call itself is guarded.
"""
from __future__ import annotations

import socket
import subprocess
import threading

import pytest


class ImpureTest(AssertionError):
    pass


def _refuse(what: str):
    def refuse(*a, **k):
        raise ImpureTest(f"a unit test may not {what}: move it to tests/integration/")
    return refuse


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    real_socket_init = socket.socket.__init__
    real_start = threading.Thread.start
    real_popen_init = subprocess.Popen.__init__

    def guarded_socket_init(self, family=-1, type=-1, proto=-1, fileno=None):
        fam = socket.AF_INET if family == -1 else family
        if fileno is None and fam in (socket.AF_INET, socket.AF_INET6):
            raise ImpureTest("a unit test may not open an internet socket: "
                             "move it to tests/integration/")
        real_socket_init(self, family, type, proto, fileno)

    socket.socket.__init__ = guarded_socket_init  # type: ignore[method-assign]
    threading.Thread.start = _refuse("start a thread")  # type: ignore[method-assign]
    subprocess.Popen.__init__ = _refuse("start a process")  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.__init__ = real_socket_init  # type: ignore[method-assign]
        threading.Thread.start = real_start  # type: ignore[method-assign]
        subprocess.Popen.__init__ = real_popen_init  # type: ignore[method-assign]
