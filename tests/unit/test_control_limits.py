"""control/limits.py: start limits per principal and per zone, the connection book, caps."""
from __future__ import annotations

import pytest

from control.errors import TooMany
from control.limits import (Active, ConnectionBook, PerKeyCap, StartLimiter, StartLimits,
                            connection_cap, raise_open_files)
from streamer.mixer.arbitration import Level

E, P, N, B = Level.EMERGENCY, Level.PRIORITY, Level.NORMAL, Level.BACKGROUND


def limiter(**kw) -> StartLimiter:
    return StartLimiter(StartLimits(**kw))


def test_active_per_principal_counts_engine_and_pending():
    lim = limiter(active_per_principal=3, starts_per_minute_per_principal=100,
                  active_per_zone=100)
    held = [Active("user:1", frozenset({"v1"}), B, True)]
    t1 = lim.admit("user:1", {"v1"}, B, True, held, 0.0)
    lim.admit("user:1", {"v1"}, B, False, held, 0.1)   # t1 still pending: counts
    with pytest.raises(TooMany) as ei:
        lim.admit("user:1", {"v1"}, B, False, held, 0.2)
    assert ei.value.code == "too_many_broadcasts" and ei.value.extra["limit"] == 3
    lim.release(t1)
    lim.admit("user:1", {"v1"}, B, False, held, 0.3)   # room again once released
    # another principal is not affected
    lim.admit("user:2", {"v1"}, B, False, held, 0.4)


def test_decoders_per_principal_only_count_decoding_sources():
    lim = limiter(decoders_per_principal=2, active_per_principal=10, active_per_zone=10)
    held = [Active("a", frozenset({"z"}), N, True), Active("a", frozenset({"z"}), N, True)]
    with pytest.raises(TooMany) as ei:
        lim.admit("a", {"z"}, N, True, held, 0.0)
    assert ei.value.code == "too_many_decoders"
    lim.admit("a", {"z"}, N, False, held, 0.0)  # a tone needs no decoder


@pytest.mark.parametrize("level", [B, N, P, E])
def test_starts_per_minute_per_principal_any_level(level):
    lim = limiter(starts_per_minute_per_principal=5, active_per_principal=100)
    for i in range(5):
        lim.release(lim.admit("a", {"z"}, level, False, [], i * 1.0))
    with pytest.raises(TooMany) as ei:
        lim.admit("a", {"z"}, level, False, [], 10.0)
    assert ei.value.code == "too_many_starts"
    assert ei.value.extra["retry_after_s"] == 50   # the first start leaves the window at 60 s
    lim.admit("a", {"z"}, level, False, [], 60.5)


def test_zone_limits_never_refuse_an_emergency_nor_count_lower_levels():
    lim = limiter(active_per_zone=2, active_per_principal=100,
                  starts_per_minute_per_principal=100)
    flood = [Active(f"official{i}", frozenset({"village"}), B, True) for i in range(2)]
    with pytest.raises(TooMany) as ei:
        lim.admit("official9", {"village"}, B, True, flood, 0.0)
    assert ei.value.code == "zone_limit" and ei.value.extra["zone"] == "village"
    # a higher level is not held back by lower-level broadcasts
    lim.release(lim.admit("operator", {"village", "commune"}, N, True, flood, 0.0))
    # an emergency is never refused by a zone's limits, even at its level
    urgent = flood + [Active(f"auth{i}", frozenset({"village"}), E, False) for i in range(5)]
    lim.release(lim.admit("authority", {"village"}, E, False, urgent, 0.0))


def test_zone_start_rate_counts_every_principal():
    lim = limiter(starts_per_minute_per_zone=4, active_per_zone=100)
    for i in range(4):
        lim.release(lim.admit(f"p{i}", {"z"}, N, False, [], float(i)))
    with pytest.raises(TooMany) as ei:
        lim.admit("p9", {"z"}, N, False, [], 5.0)
    assert ei.value.code == "zone_start_rate"
    lim.release(lim.admit("p9", {"other"}, N, False, [], 5.0))   # other zones unaffected
    lim.release(lim.admit("p9", {"z"}, E, False, [], 5.0))       # an emergency is not refused


def test_refusal_takes_nothing():
    lim = limiter(active_per_principal=1, starts_per_minute_per_principal=2)
    held = [Active("a", frozenset({"z"}), N, False)]
    for _ in range(10):
        with pytest.raises(TooMany):
            lim.admit("a", {"z"}, N, False, held, 0.0)
    assert lim.refused == 10
    lim.admit("a", {"z"}, N, False, [], 1.0)   # refused attempts used none of the rate


# ----------------------------------------------------------------------------- connections

def test_connection_book_evicts_oldest_idle_of_the_address():
    book = ConnectionBook(per_address=3, total=100)
    for k in "abc":
        assert book.opened(k, "10.0.0.1") == (True, [])
    book.busy("a")                              # a request in progress: never evicted
    ok, victims = book.opened("d", "10.0.0.1")
    assert ok and victims == ["b"]
    assert book.count("10.0.0.1") == 3 and book.evicted == 1
    assert book.opened("x", "10.0.0.2") == (True, [])   # other addresses untouched


def test_connection_book_refuses_only_when_all_are_busy():
    book = ConnectionBook(per_address=2, total=100)
    for k in "ab":
        book.opened(k, "h")
        book.busy(k)
    assert book.opened("c", "h") == (False, [])
    assert book.refused == 1 and len(book) == 2
    book.idle("a")
    assert book.opened("c", "h") == (True, ["a"])


def test_connection_book_total_cap_evicts_the_oldest_idle_anywhere():
    book = ConnectionBook(per_address=1000, total=4)
    for i in range(4):
        book.opened(f"flood{i}", "127.0.0.2")
    book.busy("flood0")
    ok, victims = book.opened("admin", "127.0.0.1")
    assert ok and victims == ["flood1"]
    # an answered keep-alive connection becomes the newest idle one
    book.idle("flood0")
    ok, victims = book.opened("next", "127.0.0.3")
    assert victims == ["flood2"]


def test_connection_book_flood_of_half_open_connections_never_keeps_a_request_out():
    book = ConnectionBook(per_address=50, total=200)
    served = 0
    for i in range(5000):                       # a flood that never sends a full request
        ok, _ = book.opened(("flood", i), f"127.0.{i % 7}.9")
        assert ok
        if i % 100 == 0:                        # a real client in the middle of it
            ok, _ = book.opened(("real", i), "127.0.0.1")
            assert ok
            book.busy(("real", i))
            served += 1
            book.idle(("real", i))
            book.closed(("real", i))
        assert len(book) <= 200
    assert served == 50


def test_connection_book_closed_forgets():
    book = ConnectionBook(per_address=1, total=10)
    book.opened("a", "h")
    book.closed("a")
    book.closed("a")
    assert len(book) == 0 and book.count("h") == 0
    assert book.opened("b", "h") == (True, [])


def test_connection_cap_and_open_files():
    assert connection_cap(4000, 1024, 256) == 768
    assert connection_cap(4000, 1_000_000, 256) == 4000
    assert connection_cap(4000, 100, 256) == 16
    assert raise_open_files(65536, 1024, 524288) == 65536
    assert raise_open_files(65536, 1024, 4096) == 4096
    assert raise_open_files(65536, 1024, -1) == 65536
    assert raise_open_files(65536, 100_000, 200_000) == 100_000   # never lowered


def test_per_key_cap():
    cap = PerKeyCap(2)
    assert cap.acquire("u") and cap.acquire("u") and not cap.acquire("u")
    assert cap.acquire("v")
    cap.release("u")
    assert cap.held("u") == 1 and cap.acquire("u")
    cap.release("v")
    cap.release("v")
    assert cap.held("v") == 0
