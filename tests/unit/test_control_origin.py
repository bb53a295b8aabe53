"""Ambient-credential requests: Host, Origin and body type rules (issue 13, finding 6d)."""
from __future__ import annotations

import pytest

from control.origin import body_problem, bootstrap_problem, host_problem, origin_problem


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080",
                                  "[::1]:8080", "127.0.0.2:8080"])
def test_loopback_hosts_on_the_served_port_are_served(host):
    assert host_problem(host, 8080) is None


@pytest.mark.parametrize("host", ["evil.example:8080", "127.0.0.1.nip.io:8080", "10.0.0.1:8080",
                                  "127.0.0.1:8081", "127.0.0.1", "", None, "[::1", "a:b:c",
                                  "127.0.0.1:99999999", "localhost:-1", "0.0.0.0:8080"])
def test_other_hosts_are_refused(host):
    assert host_problem(host, 8080)


@pytest.mark.parametrize("method,origin,ok", [
    ("POST", None, True), ("POST", "http://127.0.0.1:8080", True),
    ("DELETE", "HTTP://127.0.0.1:8080", True),
    ("POST", "http://127.0.0.2:8080", False), ("POST", "http://127.0.0.1:9999", False),
    ("PUT", "null", False), ("PATCH", "http://evil.example", False), ("DELETE", "", False),
    ("GET", "http://evil.example", True),  # reads: the Host rule and CORS cover them
])
def test_writes_come_from_the_same_origin_or_none(method, origin, ok):
    h = {"Host": "127.0.0.1:8080"}
    if origin is not None:
        h["Origin"] = origin
    assert (origin_problem(method, h) is None) == ok


@pytest.mark.parametrize("ctype,ok", [
    ("application/json", True), ("multipart/form-data", True), ("text/csv", True),
    ("text/plain", False), ("application/x-www-form-urlencoded", False),
    ("application/octet-stream", False), ("", False)])
def test_a_write_body_a_page_could_send_without_preflight_is_refused(ctype, ok):
    assert (body_problem("POST", ctype, True) is None) == ok
    assert body_problem("POST", ctype, False) is None
    assert body_problem("GET", ctype, True) is None


def test_bootstrap_problem_checks_all_three():
    h = {"Host": "127.0.0.1:8080"}
    assert bootstrap_problem("POST", h, "application/json", True, 8080) is None
    assert bootstrap_problem("POST", {"Host": "evil:8080"}, "application/json", True, 8080)
    assert bootstrap_problem("POST", dict(h, Origin="http://127.0.0.9:8080"), "application/json",
                             True, 8080)
    assert bootstrap_problem("POST", h, "text/plain", True, 8080)
