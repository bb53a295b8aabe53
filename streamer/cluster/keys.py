"""Every Redis key Loa uses, with its type and lifetime: the one place that names them.

Redis carries state and control only, never media. Every key is under one prefix
(`loa:` unless a deployment shares its Redis and sets another), and every key that describes
something alive has a TTL, so what dies disappears by itself: a node that is killed is gone
from the registry within `NODE_TTL_S`, a receiver whose edge died within `RECEIVER_TTL_S`.

- `{p}node:{node}` (hash; TTL `NODE_TTL_S` 6 s, refreshed every `NODE_REFRESH_S` 2 s; each
  node): address, role, media and feed addresses, load, receivers, programmes, the highest
  fencing token it has seen; an edge also the zones whose static destinations it sends
  (`serves`) and when it started (`since`); an origin whether its database is open
  (`storage`: `waiting` for a standby on air before it has the data directory's lock).
- `{p}nodes:{role}` (sorted set; members scored by their expiry in unix ms, readers ignore and
  prune expired ones; each node): which nodes exist, per role.
- `{p}rx:{receiver}` (hash; TTL `RECEIVER_TTL_S` 90 s, refreshed at most every
  `RECEIVER_REFRESH_S` 30 s; the edge holding it): edge, zone, last report (JSON).
- `{p}edge:{node}:rx`, `{p}zone:{zone}:rx` (sets; TTL `RECEIVER_TTL_S`, refreshed with their
  members; the edges): the receivers an edge holds, the receivers of a zone.
- `{p}lease:{name}` (string; PX `LEASE_MS` 6 s, renewed by compare-and-extend; the leader): the
  holder's token (node id + random).
- `{p}lease:{name}:fence` (integer; no TTL, it must only grow; the leader at acquisition): the
  fencing counter, INCR floored by the acquirer's floor.
- `{p}lease:{name}:released` (string; PX `LEASE_MS`; a holder that releases the lease): its
  token, so a waiting node takes a released lease at once, but not one that Redis lost (an
  empty restart): that one it waits out until the expiry it last saw.
- `{p}commands` (stream, MAXLEN ~`COMMANDS_MAXLEN`; the leader): commands that must not be lost
  (start/stop, alerts), each with its fencing token. Consumer group `edge:{node}` per edge: what
  that edge has read and acknowledged (XPENDING shows what it has not applied).
- `{p}rxsecrets` (hash; no TTL, rewritten whole when missing; the leader): receiver id →
  its secret and zone sealed with the cluster key (AES-GCM, the id as associated data), so an
  edge can check a receiver's messages without the database; `{p}rxsecrets:v` (integer; the
  leader): bumped at every change, the edges reload when it moves.
- `{p}onair:{broadcast}` (hash; TTL `ONAIR_TTL_S` 60 s, rewritten every second; the leader):
  a broadcast on air or queued at the leader: its `StartBroadcast` as data (`cmd`, JSON), when
  it went on air at offset 0 (`start_ms`, unix ms), its position and when it was read (`pos`,
  `pos_ms`) and whether it was paused then (`paused`), the leader's fencing token; `{p}onair`
  (set, same TTL): their ids. Deleted when the broadcast ends; a standby that takes the lease
  resumes them (`streamer.cluster.onair`).
- `{p}tree` (string, JSON; no TTL, written by the leader when the tree changes and again when
  missing): the zone tree (zones with their static destinations, groups), so that a standby
  origin can go on air before it can open the database (`streamer.cluster.zonesync`).
- `{p}events` (pub/sub channel, lossy; any node): UI events only.

The fencing counter has no TTL and is never reset by Loa; if Redis restarts without persistence
it starts again from 0, so the leader's acquisition floors it (see `streamer.cluster.lease`).
"""
from __future__ import annotations

__all__ = ["Keys", "NODE_TTL_S", "NODE_REFRESH_S", "RECEIVER_TTL_S", "RECEIVER_REFRESH_S",
           "LEASE_MS", "COMMANDS_MAXLEN", "ROLES", "ONAIR_TTL_S"]

NODE_TTL_S = 6.0
NODE_REFRESH_S = 2.0
RECEIVER_TTL_S = 90.0
RECEIVER_REFRESH_S = 30.0
LEASE_MS = 6000
COMMANDS_MAXLEN = 100_000
ONAIR_TTL_S = 60.0
ROLES = ("origin", "edge", "all")


def _part(s: str) -> str:
    """A key component: no separator, no whitespace, bounded (ids come from configuration and
    from receivers' authenticated messages, but a key must never be ambiguous)."""
    if not s or len(s) > 200 or any(c in s for c in ": \t\r\n{}"):
        raise ValueError(f"not usable in a Redis key: {s!r}")
    return s


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str = "loa:") -> None:
        self.p = prefix

    def node(self, node_id: str) -> str:
        return f"{self.p}node:{_part(node_id)}"

    def nodes(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        return f"{self.p}nodes:{role}"

    def receiver(self, receiver_id: str) -> str:
        return f"{self.p}rx:{_part(receiver_id)}"

    def edge_receivers(self, node_id: str) -> str:
        return f"{self.p}edge:{_part(node_id)}:rx"

    def zone_receivers(self, zone_id: str) -> str:
        return f"{self.p}zone:{_part(zone_id)}:rx"

    def lease(self, name: str) -> str:
        return f"{self.p}lease:{_part(name)}"

    def fence(self, name: str) -> str:
        return f"{self.p}lease:{_part(name)}:fence"

    def lease_released(self, name: str) -> str:
        return f"{self.p}lease:{_part(name)}:released"

    @property
    def commands(self) -> str:
        return f"{self.p}commands"

    @staticmethod
    def edge_group(node_id: str) -> str:
        return f"edge:{_part(node_id)}"

    @property
    def rx_secrets(self) -> str:
        return f"{self.p}rxsecrets"

    @property
    def rx_secrets_version(self) -> str:
        return f"{self.p}rxsecrets:v"

    @property
    def onair_index(self) -> str:
        return f"{self.p}onair"

    def onair(self, broadcast_id: str) -> str:
        return f"{self.p}onair:{_part(broadcast_id)}"

    @property
    def tree(self) -> str:
        return f"{self.p}tree"

    @property
    def events(self) -> str:
        return f"{self.p}events"
