"""control/throttle.py: sign-in throttling per (username, address) that never locks an
official out, and the username budget that slows instead."""
from __future__ import annotations

import asyncio

import pytest

from control.throttle import LoginThrottle, SlowGate


def fail(t: LoginThrottle, user: str, addr: str, n: int, now: float) -> None:
    for i in range(n):
        t.failed(user, addr, now + i * 0.01)


@pytest.mark.parametrize("user,attacker,official", [
    ("chairman", "203.0.113.9", "198.51.100.7"),
    ("Cán.Bộ", "10.0.0.1", "10.0.0.2"),
    ("x", "::1", "127.0.0.1"),
])
def test_failures_from_one_address_never_block_another(user, attacker, official):
    t = LoginThrottle(limit=5, window_s=300)
    fail(t, user, attacker, 5, 0.0)
    assert t.check(user, attacker, 1.0).retry_after_s > 0
    v = t.check(user, official, 1.0)
    assert v.retry_after_s == 0 and v.delay_s == 0 and v.clean
    # nor anyone else behind the failing address
    assert t.check("someone-else", attacker, 1.0).retry_after_s == 0


def test_pair_blocks_grow_and_a_success_clears_them():
    t = LoginThrottle(limit=5, window_s=300, max_block_s=1200)
    fail(t, "u", "a", 5, 0.0)
    first = t.check("u", "a", 0.1).retry_after_s
    assert 290 < first <= 300                # 5 per 5 min, as before
    fail(t, "u", "a", 5, 301.0)
    assert 590 < t.check("u", "a", 301.1).retry_after_s <= 600     # then twice as long
    fail(t, "u", "a", 5, 902.0)
    assert 1190 < t.check("u", "a", 902.1).retry_after_s <= 1200   # capped
    fail(t, "u", "a", 5, 2103.0)
    assert t.check("u", "a", 2103.1).retry_after_s <= 1200
    t.succeeded("u", "a")
    assert t.check("u", "a", 2104.0).retry_after_s == 0


def test_four_failures_do_not_block_and_the_window_forgets():
    t = LoginThrottle(limit=5, window_s=300)
    fail(t, "u", "a", 4, 0.0)
    assert t.check("u", "a", 1.0).retry_after_s == 0
    assert t.check("u", "a", 1.0).pair_failures == 4
    assert t.check("u", "a", 301.0).pair_failures == 0


def test_username_budget_slows_never_blocks():
    t = LoginThrottle(limit=5, window_s=300, user_budget=20, slow_step_s=0.5, max_slow_s=5.0)
    for i in range(19):                   # a botnet: one failure from each of many addresses
        t.failed("chairman", f"10.1.0.{i}", i * 0.1)
    assert t.check("chairman", "10.9.9.9", 2.0).delay_s == 0
    t.failed("chairman", "10.1.0.99", 2.0)
    v = t.check("chairman", "198.51.100.7", 2.1)
    assert v.retry_after_s == 0 and v.delay_s == 0.5 and v.clean and v.user_failures == 20
    for i in range(100):
        t.failed("chairman", f"10.2.{i}.1", 3.0)
    v = t.check("chairman", "198.51.100.7", 3.1)
    assert v.retry_after_s == 0 and v.delay_s == 5.0      # slowed, capped, never refused
    assert t.check("other-user", "10.2.0.1", 3.1).delay_s == 0
    assert t.check("chairman", "198.51.100.7", 400.0).delay_s == 0   # the window forgets


def test_memory_stays_bounded_under_a_spray():
    t = LoginThrottle()
    for i in range(25_000):
        t.failed(f"user{i}", f"10.{i % 250}.{i // 250 % 250}.1", i * 0.001)
    assert len(t._pairs) <= LoginThrottle.MAX_KEYS + 1
    assert len(t._users) <= LoginThrottle.MAX_KEYS + 1


def test_slow_gate_runs_one_at_a_time_clean_clients_first():
    async def main() -> list[str]:
        gate = SlowGate(max_waiting=2)
        order: list[str] = []
        running = 0

        def job(name: str):
            async def run() -> str:
                nonlocal running
                running += 1
                assert running == 1
                await asyncio.sleep(0)
                order.append(name)
                running -= 1
                return name
            return run

        tasks = [asyncio.create_task(gate.run("u", False, 0.001, job("attacker0")))]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(gate.run("u", False, 0.001, job(f"attacker{i}")))
                  for i in (1, 2)]
        await asyncio.sleep(0)
        refused = await gate.run("u", False, 0.001, job("attacker3"))
        assert refused == (False, None)             # too many failing clients waiting
        tasks.append(asyncio.create_task(gate.run("u", True, 0.001, job("official"))))
        results = await asyncio.gather(*tasks)
        assert all(ran for ran, _ in results)
        assert gate.waiting("u") == 0 and not gate._busy
        return order

    order = asyncio.run(main())
    assert order == ["attacker0", "official", "attacker1", "attacker2"]
