"""The dashboard's listeners tile in real headless Chromium against a real `loa serve`: two
HTTP listeners of a zone show as 2, and 0 again when they leave (issue 18)."""
from __future__ import annotations

import socket

import pytest

from tests.conftest import require_tool
from tests.integration.test_dashboard import browser  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

TOKEN = "dash-listen-admin-token-0123456789"
TOML = """
listen_public_zones = ["xa1"]
[[zones]]
id = "xa1"
name = "Xã Một"
"""


def test_listener_count_tile(serve, browser):  # noqa: F811
    require_tool("chromium", "the dashboard is checked in a real browser")
    server = serve(TOML, env={"LOA_ADMIN_TOKEN": TOKEN})
    st, u = server.request("POST", "/api/v1/users", {
        "username": "truc-ban", "password": "mat-khau-truc-ban", "role": "viewer"},
        headers={"Authorization": f"Bearer {TOKEN}"})
    assert st == 201, u
    conns = []
    for _ in range(2):
        c = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        c.sendall(b"GET /listen/xa1.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in c.recv(4096).split(b"\r\n")[0]
        conns.append(c)
    b = browser(server.url + "/dashboard")
    b.wait("the login form", "!document.getElementById('login').classList.contains('hidden')")
    b.js("""(() => { document.getElementById('username').value = 'truc-ban';
        document.getElementById('password').value = 'mat-khau-truc-ban';
        document.getElementById('login').requestSubmit(); return true; })()""")
    b.wait("two listeners", "document.getElementById('n-listeners').textContent === '2'",
           timeout=20)
    assert "Xã Một: 2" in b.js("document.getElementById('listeners-tile').title")
    for c in conns:
        c.close()
    b.wait("no listeners", "document.getElementById('n-listeners').textContent === '0'",
           timeout=20)
