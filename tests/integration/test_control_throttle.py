"""Nobody can lock an official out (issue 13, finding 4), on a real app on loopback: clients
from different loopback addresses (127.0.0.x) sign in to the same server."""
from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "throttle-admin-token-0123456789"
ADM = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "mat-khau-dung-123"


@contextlib.asynccontextmanager
async def server(tmp_path, **settings: Any) -> AsyncIterator[TestServer]:
    from control.app import create_app
    from control.settings import Settings
    kw: dict[str, Any] = {"data_dir": tmp_path, "admin_token": ADMIN_TOKEN, "send_port": 0,
                          "zones": [{"id": "xa"}]}
    kw.update(settings)
    async with TestServer(create_app(Settings(**kw)), host="127.0.0.1") as ts:
        yield ts


@contextlib.asynccontextmanager
async def client(source: str) -> AsyncIterator[aiohttp.ClientSession]:
    conn = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        yield s


async def login(ts: TestServer, source: str, user: str, password: str) -> tuple[int, dict]:
    async with client(source) as s:
        async with s.post(ts.make_url("/api/v1/session"),
                          json={"username": user, "password": password}) as r:
            return r.status, await r.json()


async def make_user(ts: TestServer, name: str) -> None:
    async with client("127.0.0.1") as s:
        async with s.post(ts.make_url("/api/v1/users"), headers=ADM,
                          json={"username": name, "role": "official", "scope": ["xa"],
                                "password": PASSWORD}) as r:
            assert r.status == 201, await r.text()


async def test_guessing_from_one_address_never_locks_the_official_out(tmp_path):
    async with server(tmp_path) as ts:
        await make_user(ts, "chu-tich")
        await make_user(ts, "pho-chu-tich")
        for _ in range(5):
            assert (await login(ts, "127.0.0.66", "chu-tich", "sai"))[0] == 401
        # the guessing client is slowed down (blocked for this user)...
        st, err = await login(ts, "127.0.0.66", "chu-tich", PASSWORD)
        assert st == 429 and err["error"]["retry_after_s"] > 200
        # ...but the official, from another client, signs in
        st, body = await login(ts, "127.0.0.7", "chu-tich", PASSWORD)
        assert st == 200, body
        # and a colleague behind the guessing address too
        st, body = await login(ts, "127.0.0.66", "pho-chu-tich", PASSWORD)
        assert st == 200, body
        # failures and throttling are audited
        async with client("127.0.0.1") as s:
            async with s.get(ts.make_url("/api/v1/audit"), headers=ADM,
                             params={"action": "session.login", "limit": "100"}) as r:
                entries = (await r.json())["entries"]
        results = [e["result"] for e in entries if e["target"] == "chu-tich"]
        assert results.count("invalid_credentials") == 5
        assert results.count("too_many_attempts") == 1
        throttled = [e for e in entries if e["result"] == "too_many_attempts"]
        assert throttled[0]["detail"]["throttle"]["retry_after_s"] > 0
        assert throttled[0]["address"] == "127.0.0.66"


async def test_a_botnet_slows_the_username_but_never_blocks_the_password(tmp_path):
    async with server(tmp_path, login_user_budget=6) as ts:
        await make_user(ts, "chu-tich")
        for i in range(8):   # one or two failures from each of many addresses
            assert (await login(ts, f"127.0.1.{i // 2 + 1}", "chu-tich", "sai"))[0] == 401
        t0 = time.monotonic()
        st, body = await login(ts, "127.0.0.9", "chu-tich", PASSWORD)
        slowed = time.monotonic() - t0
        assert st == 200, body
        assert slowed >= 1.0   # 3 failures over the budget: 1.5 s
