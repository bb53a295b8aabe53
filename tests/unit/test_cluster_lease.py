"""The lease state machine and the fencing rules, with time as a parameter."""
from __future__ import annotations

import pytest

from streamer.cluster.commands import ClusterCommand, decode, encode
from streamer.cluster.keys import Keys
from streamer.cluster.lease import FenceGate, LeaseState, fence_floor
from streamer.cluster.nodes import live_members


def test_may_issue_only_within_half_a_lease_of_the_last_confirmation():
    st = LeaseState(lease_ms=6000)
    assert not st.may_issue(0.0)
    st.acquired(sent_at=10.0, fence=7)
    assert st.may_issue(10.0) and st.may_issue(12.99)
    assert not st.may_issue(13.0)          # half the lease without a confirmed renewal
    st.renewed(sent_at=12.5, ok=True)      # counted from when it was sent, not answered
    assert st.may_issue(15.4) and not st.may_issue(15.5)


def test_a_late_answer_never_moves_the_confirmation_back():
    st = LeaseState(lease_ms=4000)
    st.acquired(100.0, 1)
    st.renewed(101.0, True)
    st.renewed(100.5, True)    # an older request answered last
    assert st.confirmed_sent_at == 101.0


def test_a_refused_renewal_loses_the_lease():
    st = LeaseState(lease_ms=6000)
    st.acquired(0.0, 3)
    st.renewed(1.0, ok=False)
    assert not st.held and not st.may_issue(1.0) and st.losses == 1


def test_expire_after_a_whole_lease_without_confirmation():
    st = LeaseState(lease_ms=6000)
    st.acquired(0.0, 3)
    st.expire(5.9)
    assert st.held
    st.expire(6.0)
    assert not st.held


def test_a_waiting_node_waits_out_the_holder_it_saw_until_its_lease_would_expire():
    st = LeaseState(lease_ms=6000)
    assert st.wait_for(0.0) == ""                  # nobody seen: a free lease is taken
    st.seen_other(sent_at=10.0, holder="origin-a/1f", pttl_ms=4500)
    assert st.wait_for(10.0) == "origin-a/1f" and st.wait_for(14.49) == "origin-a/1f"
    assert st.wait_for(14.5) == ""                 # its lease is over by now, however it ended
    st.seen_other(sent_at=14.0, holder="origin-a/1f", pttl_ms=6000)   # renewed meanwhile
    assert st.wait_for(19.9) == "origin-a/1f"
    st.seen_other(sent_at=15.0, holder="origin-c/2e", pttl_ms=-2)     # a key without expiry
    assert st.wait_for(15.0) == ""


def test_fence_floor_beats_wall_clock_and_every_token_seen():
    assert fence_floor(1000.0) == 1_000_000
    assert fence_floor(1000.0, 5, 1_000_000) == 1_000_001   # a token from a clock ahead
    assert fence_floor(1000.0, 2_000_000_000) == 2_000_000_001
    # a later wall clock gives a higher floor with nothing seen: a Redis restarted empty
    # (counter 0) cannot make tokens go backwards while clocks move forward
    assert fence_floor(2000.0) > fence_floor(1999.999)


def test_fence_gate_refuses_older_tokens_accepts_the_same():
    g = FenceGate()
    assert g.admit(5) and g.admit(5) and g.admit(9)
    assert not g.admit(8) and not g.admit(5)
    assert g.admit(9) and g.highest == 9
    assert (g.accepted, g.refused) == (4, 2)


def test_command_round_trip_and_malformed_entries():
    c = ClusterCommand(42, "start", {"zones": ["z1"], "level": "emergency"}, "origin-a")
    back = decode(b"1-0", {k.encode(): v.encode() for k, v in encode(c).items()})
    assert back == ClusterCommand(42, "start", {"zones": ["z1"], "level": "emergency"},
                                  "origin-a", "1-0")
    assert decode("1-0", {"kind": "start"}) is None                 # no token
    assert decode("1-0", {"fence": "x", "kind": "start"}) is None
    assert decode("1-0", {"fence": "0", "kind": "start"}) is None   # tokens start at 1
    assert decode("1-0", {"fence": "3", "kind": "s", "body": "[1]"}) is None
    assert decode("1-0", {"fence": "3", "kind": "s", "body": "{"}) is None


def test_keys_are_unambiguous():
    k = Keys("loa:")
    assert k.node("edge-1") == "loa:node:edge-1"
    assert k.fence("leader") == "loa:lease:leader:fence"
    assert k.edge_group("e1") == "edge:e1"
    for bad in ("a:b", "", "a b", "x\n", "{a}"):
        with pytest.raises(ValueError):
            k.receiver(bad)
    with pytest.raises(ValueError):
        k.nodes("king")


def test_live_members_drop_expired_scores():
    assert live_members([(b"a", 2000.0), (b"b", 999.0), ("c", 1001.0)], 1000.0) == ["a", "c"]


def test_fence_gate_media_and_commands_share_the_newest_token():
    from streamer.cluster.lease import FenceGate
    g = FenceGate()
    assert g.admit_media(7) and g.admit_media(7)     # one leader sends many envelopes
    assert not g.admit(6) and g.refused == 1         # its predecessor's commands are refused
    assert g.admit(9)                                # a newer leader's command ...
    assert not g.admit_media(7) and g.media_refused == 1   # ... fences the older media
    assert g.accepted == 1 and g.highest == 9


def test_a_vanished_lease_is_left_to_its_holder_while_redis_has_just_restarted():
    st = LeaseState(lease_ms=6000)
    # a node that never held it (a standby still starting when Redis restarted empty): not in
    # the first half lease of Redis' life, then yes (a lease gone then expired by itself)
    assert not st.may_take_vanished(100.0, redis_uptime_s=0)
    assert not st.may_take_vanished(100.0, redis_uptime_s=2.9)
    assert st.may_take_vanished(100.0, redis_uptime_s=3.0)
    # its holder, whose renewal was just refused because the key is gone: at once
    st.acquired(sent_at=98.5, fence=7)
    st.renewed(sent_at=100.0, ok=False)
    assert not st.held and st.recently_held(100.0)
    assert st.may_take_vanished(100.0, redis_uptime_s=0)
    # ... but not a whole lease after its last confirmed renewal
    assert not st.recently_held(100.0 + 6.0) and not st.may_take_vanished(106.0, 1)


def test_an_edge_keeps_taking_media_from_an_origin_the_registry_missed_for_a_while():
    from streamer.cluster.nodes import OriginsSeen
    leader, standby = ("10.0.0.1", 7000), ("10.0.0.2", 7000)
    seen = OriginsSeen(grace_s=15.0)
    assert set(seen.update([leader, standby], 100.0)) == {leader, standby}
    # Redis restarted empty: the standby wrote its hash again first, the leader not yet
    assert set(seen.update([standby], 101.0)) == {leader, standby}
    assert seen.update([standby], 101.0)[0] == standby        # newest first
    assert set(seen.update([leader, standby], 103.0)) == {leader, standby}
    # an origin gone for good is dropped after the grace
    assert set(seen.update([standby], 117.0)) == {leader, standby}
    assert seen.update([standby], 118.1) == [standby]
    assert seen.update([], 140.0) == []
