"""Several nodes through Redis (issue 19): what `loa serve --role origin|edge` adds to a node.

Imported only when `redis_url` is set (`loa serve` with role `all` and no Redis is one node,
exactly as before, and never imports redis).

- Origin (`OriginCluster`, inside control/app.py's `Server`): the `OriginFeed` output beside
  the RtpOutput (media to the edges over UDP, never through Redis), this node's hash in the
  node registry (its feed address is how edges find it), the leadership lease, and while it
  holds the lease: every start/stop the engine takes (`command_to_dict` of the port's
  StartBroadcast/StopBroadcast) and every alert event published on the commands stream with
  its fencing token, and the receivers' secrets sealed with the cluster key in `{p}rxsecrets`.
  The schedule runner and the alert feeds/repeats run only while `leader()` holds; an alert
  pushed to an origin that does not lead is refused with 503 naming the leader.
- Standing: `leader`, `unsure` (no renewal confirmed within half the lease) or `follower`
  (Redis says another origin holds the lease); a change is logged, published
  (`cluster.leadership`) and recorded. A follower stops what it has on air (the new leader
  carries it on from `{p}onair`), sends no media and refuses live talk (503 not_leader); an
  unsure leader airs on (a Redis stall must not silence a speaker; the edges refuse a stale
  origin's media by its fencing token). Live talk is not carried over in a takeover: the
  phone's WebRTC connection (ICE, DTLS) is the old origin's and cannot move; the claim ends,
  the page is told and reconnects, and what the talk paused resumes at the new leader where
  it was paused.
- Zones: the leader sends `zone.set`/`zone.drop` for the tree's changes (the API, the settings
  file) to the edges (streamer/cluster/zonesync.py), and keeps the tree in `{p}tree`; the static
  destinations of zones an edge serves (`serve_zones`) are left out of the origin's engine.
- Standby origin: a second origin on the same data directory (shared storage) is on air ahead
  of its lock (control/standby.py); when it takes the lease it carries on what the last
  leader had on air, from `{p}onair` (streamer/cluster/onair.py: the leader rewrites it every
  second), under the same broadcast ids at the offset reached by now. An origin that Redis
  says is not the holder sends no media (`OriginFeed.enabled`).
- Edge (`EdgeServer`, `serve_edge`): no database, no control API (an HTTP `/health` only): an
  `EdgeNode` with its own Fanout on the receiver port, SRTP keyring, `ReceiverRegistry` and the
  receiver endpoint; receivers' secrets from `{p}rxsecrets` (opened in memory, reloaded when the
  origin's version moves; kept if Redis goes away); origins found through the node registry;
  receivers claimed in the receiver directory; commands read from its consumer group.

Commands an edge applies (today an edge only relays media, so most of what an origin decides
is already in the media it sends):
- `zone.set` {zone, multicast?: "h:p", unicast?: ["h:p"], edges?: [node]}: the edge's own
  static destinations for a zone (its LAN's multicast group); the zone is pulled while it has
  any. `zone.drop` {zone, edges?}: the zone is gone: no longer pulled nor sent here.
- `broadcast.start`, `broadcast.stop`, `alert`: recorded (the last ones, in `/health`) and
  acknowledged, so XPENDING shows an edge that has not seen an alert; nothing else to do
  at the edge, whose media follows the origin's.
- A command whose fencing token is older than the newest the edge has seen is refused,
  acknowledged and counted (`commands_refused` in `/health`).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from control.settings import ConfigError, Settings
from streamer.zones import parse_hostport

log = logging.getLogger("loa.cluster")

DISCOVER_EVERY_S = 2.0
#: an origin the registry stopped listing is still taken media from this long (OriginsSeen)
ORIGIN_GRACE_S = 15.0
SECRETS_EVERY_S = 2.0
CLAIMS_EVERY_S = 1.0
HOLD_COMMANDS_S = 6.0     # a command waits this long for the lease before it is dropped
STANDBY_POLL_S = 0.2      # a standby origin tries the data directory's lock this often
ONAIR_EVERY_S = 0.25      # a new leader carries on what the last one had on air this soon
ONAIR_WRITE_S = 1.0       # the leader rewrites what it has on air (streamer.cluster.onair)


# ------------------------------------------------------------------ settings
def check(settings: Settings) -> None:
    """The cluster settings fit together (ConfigError otherwise)."""
    if settings.role in ("origin", "edge") and not settings.redis_url:
        raise ConfigError(f"role {settings.role!r} needs redis_url (LOA_REDIS_URL)")
    if settings.redis_url:
        cluster_key(settings)


def cluster_key(settings: Settings) -> bytes:
    """The key every node shares (envelopes, subscriptions, sealed receiver secrets)."""
    if settings.cluster_key is not None:
        raw = settings.cluster_key.get_secret_value().encode()
    elif settings.cluster_key_file is not None:
        try:
            raw = settings.cluster_key_file.read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"cannot read cluster_key_file: {e}") from None
    else:
        raise ConfigError("several nodes need a shared cluster_key (LOA_CLUSTER_KEY) or "
                          "cluster_key_file")
    if len(raw) < 32:
        raise ConfigError("the cluster key must be at least 32 characters")
    return raw


def node_id(settings: Settings, role: str) -> str:
    if settings.node_id:
        return settings.node_id
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname()) or "node"
    return f"{host}-{role}-{settings.http.rpartition(':')[2]}"


def _redis(settings: Settings) -> Any:
    import redis.asyncio as aredis
    return aredis.from_url(settings.redis_url or "", socket_timeout=1.0,
                           socket_connect_timeout=1.0)


# ------------------------------------------------------------------ standby origin
async def wait_for_data_dir(settings: Settings, stop: asyncio.Event | None = None) -> Any:
    """An origin's data directory lock (control/datadir.py), waited for: a second origin on
    the same directory (shared storage) is the standby. It loads the server's modules and
    waits; when the active origin's process ends, however it ends, the kernel frees the lock,
    and the standby starts, takes the lease when the dead one's expires and carries on what
    was on air. None if `stop` is set first. (A standby with its own directory never waits,
    but does not have the records or the media files.)"""
    from control.datadir import DataDirBusy, DataDirLock
    lock = DataDirLock(settings.data_dir)
    told = False
    while True:
        try:
            return lock.acquire()
        except DataDirBusy as e:
            if not told:
                told = True
                print(f"loa: standby origin: {settings.data_dir} is held by "
                      f"{'PID ' + str(e.pid) if e.pid else 'another process'}; waiting for it",
                      flush=True)
                import control.app  # noqa: F401  (loaded now: the takeover starts faster)
        if stop is not None and stop.is_set():
            return None
        await asyncio.sleep(STANDBY_POLL_S)


# ------------------------------------------------------------------ receiver secrets
class SecretSeal:
    """A receiver's secret and zone sealed with the cluster key: AES-GCM (`cryptography`)
    under a key derived by HKDF-SHA256, the receiver id as associated data (a blob cannot be
    moved to another receiver's field)."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        k = HKDF(hashes.SHA256(), 32, salt=None, info=b"loa receiver secrets v1").derive(key)
        self._aead = AESGCM(k)

    def seal(self, rid: str, secret: bytes, zone: str) -> bytes:
        nonce = os.urandom(12)
        body = json.dumps({"s": base64.b64encode(secret).decode(), "z": zone}).encode()
        return nonce + self._aead.encrypt(nonce, body, rid.encode())

    def open(self, rid: str, blob: bytes) -> tuple[bytes, str] | None:
        from cryptography.exceptions import InvalidTag
        try:
            body = json.loads(self._aead.decrypt(blob[:12], blob[12:], rid.encode()))
            return base64.b64decode(body["s"]), str(body["z"])
        except (InvalidTag, ValueError, KeyError, TypeError):
            return None


class SecretsPublisher:
    """The leader's side: the changes since the last write (everything again if the hash is
    gone, e.g. Redis restarted empty), then a new version."""

    def __init__(self, redis: Any, keys: Any, seal: SecretSeal,
                 source: Callable[[], Mapping[str, tuple[bytes, str]]]) -> None:
        self.redis = redis
        self.keys = keys
        self.seal = seal
        self.source = source
        self._written: dict[str, tuple[bytes, str]] = {}
        self.writes = 0

    async def publish(self) -> None:
        cur = dict(self.source())
        if not await self.redis.exists(self.keys.rx_secrets):
            self._written = {}
        changed = {rid: v for rid, v in cur.items() if self._written.get(rid) != v}
        gone = [rid for rid in self._written if rid not in cur]
        if not changed and not gone:
            return
        pipe = self.redis.pipeline(transaction=True)
        items = [(rid, self.seal.seal(rid, s, z)) for rid, (s, z) in changed.items()]
        for i in range(0, len(items), 1000):
            pipe.hset(self.keys.rx_secrets, mapping=dict(items[i:i + 1000]))
        if gone:
            pipe.hdel(self.keys.rx_secrets, *gone)
        pipe.set(self.keys.rx_secrets_version, str(time.time_ns()))
        await asyncio.wait_for(pipe.execute(), 5.0)
        self._written = cur
        self.writes += 1


class SecretsMirror:
    """The edge's side: every receiver's (secret, zone) in memory, for the registry's look-ups
    on each datagram. Reloaded when the version moves; kept as it is while Redis is away."""

    def __init__(self, redis: Any, keys: Any, seal: SecretSeal) -> None:
        self.redis = redis
        self.keys = keys
        self.seal = seal
        self.secrets: dict[str, tuple[bytes, str]] = {}
        self.version: bytes | None = None
        self.bad = 0
        self.loads = 0

    def lookup(self, rid: str) -> tuple[bytes, str] | None:
        return self.secrets.get(rid)

    async def refresh(self) -> None:
        v = await self.redis.get(self.keys.rx_secrets_version)
        if v is None or v == self.version:
            return
        raw = await self.redis.hgetall(self.keys.rx_secrets)
        out: dict[str, tuple[bytes, str]] = {}
        for k, blob in raw.items():
            rid = k.decode() if isinstance(k, bytes) else str(k)
            opened = self.seal.open(rid, bytes(blob))
            if opened is None:
                self.bad += 1
                continue
            out[rid] = opened
        self.secrets = out
        self.version = v
        self.loads += 1


async def _every(period: float, stop: asyncio.Event, fn: Callable[[], Any], what: str) -> None:
    while not stop.is_set():
        try:
            await fn()
        except Exception as e:   # Redis away: the next round tries again
            log.debug("%s: %s", what, e)
        try:
            await asyncio.wait_for(stop.wait(), period)
        except TimeoutError:
            pass


# ------------------------------------------------------------------ origin
def hold_vanished_edges(before: Mapping[str, tuple[str, frozenset[str]]],
                        now_serves: Mapping[str, tuple[str, frozenset[str]]],
                        edges: list[dict[str, str]], expiry: dict[str, float], now: float
                        ) -> dict[str, tuple[str, frozenset[str]]]:
    """Which edges serve which zones, from the registry read at `now` (unix s): an edge that
    served zones and is missing from the registry before its node hash would have expired
    (`at` + its TTL, remembered in `expiry`) still serves them. Only an empty Redis restart
    makes a live edge's hash vanish early, and it writes it again within 2 s; taking its static
    destinations back for that moment made the origin send every speaker there the programme
    a second time (found by loa bench nodes). A dead edge's hash expires at that very time, so
    its zones come back to the origin no later than before."""
    from streamer.cluster.keys import NODE_TTL_S
    present = set()
    for e in edges:
        node = e.get("node")
        if not node:
            continue
        present.add(node)
        try:
            expiry[node] = float(e.get("at") or 0.0) + NODE_TTL_S
        except ValueError:
            expiry.pop(node, None)
    out = dict(now_serves)
    for node, v in before.items():
        if node not in present and now < expiry.get(node, 0.0):
            out[node] = v
    for node in [n for n, t in expiry.items() if t <= now and n not in present]:
        del expiry[node]
    return out


class OriginCluster:
    """An origin's part in the cluster (built by control/app.py's Server when Redis is set)."""

    def __init__(self, settings: Settings) -> None:
        check(settings)
        from streamer.cluster.commands import CommandLog
        from streamer.cluster.feed import OriginFeed
        from streamer.cluster.keys import Keys
        from streamer.cluster.lease import RedisLease
        from streamer.cluster.nodes import NodeRegistry
        self.settings = settings
        key = cluster_key(settings)
        self.node_id = node_id(settings, "origin")
        self.redis = _redis(settings)
        self.keys = Keys(settings.redis_prefix)
        self.feed = OriginFeed(key, ("0.0.0.0", settings.feed_port))
        self.edges_fence = 0      # the highest token the edges report (floors a new lease)
        self.lease = RedisLease(self.redis, self.keys, "leader", self.node_id,
                                floor_seen=lambda: (self.edges_fence,))
        self.log = CommandLog(self.redis, self.keys, self.node_id, lambda: self.lease.fence,
                              self.lease.may_issue)
        self.registry = NodeRegistry(self.redis, self.keys, self.node_id, "origin", self._info)
        self.seal = SecretSeal(key)
        self.secrets: SecretsPublisher | None = None
        self.counters = {"commands_sent": 0, "commands_dropped": 0, "taken_over": 0}
        from streamer.cluster.onair import OnAirBook, OnAirEntry
        self.onair_book = OnAirBook(self.redis, self.keys)
        self.onair: dict[str, OnAirEntry] = {}       # what this origin has on air (the loop's)
        self._started: deque[dict[str, Any]] = deque(maxlen=10_000)  # starts from any thread
        self.found_onair: set[str] = set()   # on air at the last leader when this one started
        self.took_over: list[dict[str, Any]] = []
        self._carried = False                # this leadership has carried the last one's on
        #: "leader" (may issue), "follower" (Redis says another origin holds the lease),
        #: "unsure" (held, not confirmed within half a lease; or not asked yet / Redis away)
        self.standing = "unsure"
        self.transitions: list[dict[str, Any]] = []
        self.yielded: list[str] = []         # broadcasts stopped here when another took over
        self._hub: Any = None
        self._unrecorded: list[dict[str, Any]] = []   # events before the records were open
        #: called (with the reason) when this origin learns another leads: the live talk
        #: connections end, so the pages reconnect (control/app.py)
        self.on_follower: list[Callable[[str], Any]] = []
        #: a standby on the active one's data directory, on air before it could open the
        #: database (control/standby.py): published, so that an origin holding the directory
        #: that learns it no longer leads frees it (`release_storage`)
        self.storage_waiting = False
        #: how a follower frees the data directory a waiting leader needs: end this process
        #: (SIGTERM: a clean shutdown; its supervisor starts it again, as the standby)
        self.release_storage: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)
        self.released_storage = False
        from streamer.cluster.zonesync import ZoneSync
        #: which edge serves which zones' static destinations (edge -> (since, zone ids)),
        #: from the edges' node hashes; the zone.set/zone.drop commands that follow the tree
        self.edge_serves: dict[str, tuple[str, frozenset[str]]] = {}
        self._edge_expiry: dict[str, float] = {}   # edge -> when its node hash expires (unix s)
        self.zonesync = ZoneSync()
        self._zone_tree: Callable[[], Any] = lambda: None
        self._apply_tree: Callable[[], None] = lambda: None
        self._zones_dirty = True
        self._next_write = 0.0
        self._engine: Any = None
        self._records: Any = None
        self._outbox: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=10_000)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def leader(self) -> bool:
        """Whether this origin may run schedules and alert intake and issue commands now."""
        return self.lease.may_issue()

    async def leader_info(self) -> dict[str, Any]:
        """The origin holding the lease: {"leader": node id, "http": its API address}; leader
        None when no origin holds it (or Redis does not answer)."""
        try:
            token = await asyncio.wait_for(self.redis.get(self.keys.lease("leader")), 1.0)
            if not token:
                return {"leader": None}
            node = token.decode().rpartition("/")[0]
            http, storage = await asyncio.wait_for(
                self.redis.hmget(self.keys.node(node), "http", "storage"), 1.0)
            out = {"leader": node, "http": http.decode() if http else None}
            if storage:
                out["storage"] = storage.decode()
            return out
        except Exception as e:   # Redis away: no one can be named
            log.debug("leader_info: %s", e)
            return {"leader": None}

    async def require_leader(self, what: str) -> None:
        """Refuse (503 not_leader, naming the leader and its API address) what only the leader
        may do, on an origin Redis says another one leads: its media would reach no edge. Not
        while merely unsure (Redis away or slow): the edges still take this origin's media."""
        if self.standing != "follower" and self.lease.other_holds is not True:
            return
        from control.http import HttpError
        who = await self.leader_info()
        raise HttpError(503, "not_leader", f"this origin does not lead: {what} at "
                        + (f"{who['leader']} ({who.get('http') or '?'})" if who.get("leader")
                           else "the leader, once one holds the lease; retry"), **who)

    def _info(self) -> dict[str, Any]:
        return {"feed": f"{self.settings.node_address}:{self.feed.address[1]}",
                "http": self.settings.http, "leader": "1" if self.leader() else "0",
                "storage": "waiting" if self.storage_waiting else "open",
                "fence": self.lease.fence, "edges": len(self.feed.subs.targets),
                "envelopes": self.feed.counters["envelopes"]}

    # the engine and the event hub tell us (any thread; never waits)
    def tap(self, cmd: Any) -> None:
        from streamer.port import StartBroadcast, command_to_dict
        if self.standing == "follower":   # what a follower does is not the edges' concern
            return
        kind = "broadcast.start" if isinstance(cmd, StartBroadcast) else "broadcast.stop"
        d = command_to_dict(cmd)
        self._outbox.append((time.monotonic(), kind, d))
        if isinstance(cmd, StartBroadcast) and not cmd.live and cmd.id:
            self._started.append(d)

    def _take_started(self) -> None:
        from streamer.cluster.onair import OnAirEntry
        while self._started:
            d = self._started.popleft()
            try:
                self.keys.onair(str(d["id"]))
            except ValueError:     # an id no Redis key can carry: not carried over
                continue
            self.onair[str(d["id"])] = OnAirEntry(d, None, self.lease.fence)

    def observe(self, ev: dict) -> None:
        t = str(ev.get("type", ""))
        if t.startswith("broadcast."):
            self._take_started()
            e = self.onair.get(str(ev.get("broadcast")))
            if e is not None:
                if t == "broadcast.started" and e.start_ms is None:
                    off = float(e.cmd.get("offset_s") or 0.0)
                    e.start_ms = int(time.time() * 1000 - off * 1000)
                elif t in ("broadcast.finished", "broadcast.stopped", "broadcast.refused"):
                    self.onair.pop(str(ev.get("broadcast")), None)
        if t.startswith("alert.") and t not in ("alert.refused", "alert.feed_failed"):
            self._outbox.append((time.monotonic(), "alert", dict(ev)))

    def send(self, kind: str, body: Mapping[str, Any]) -> None:
        """Queue a command for the edges (e.g. `zone.set`, `zone.drop`)."""
        self._outbox.append((time.monotonic(), kind, dict(body)))

    async def _sender(self) -> None:
        from streamer.cluster.commands import NotLeader
        while not self._stop.is_set():
            while self._outbox:
                at, kind, body = self._outbox[0]
                try:
                    await self.log.send(kind, body)
                except NotLeader:
                    if time.monotonic() - at < HOLD_COMMANDS_S:
                        break               # the lease may come: wait a little
                    self.counters["commands_dropped"] += 1
                except Exception as e:      # Redis away: keep it and retry
                    log.debug("command %s: %s", kind, e)
                    if time.monotonic() - at < 60.0:
                        break
                    self.counters["commands_dropped"] += 1
                else:
                    self.counters["commands_sent"] += 1
                self._outbox.popleft()
            try:
                await asyncio.wait_for(self._stop.wait(), 0.1)
            except TimeoutError:
                pass

    async def _free_storage_for_leader(self) -> None:
        """A follower that holds the data directory the leader waits for frees it."""
        if self.standing != "follower" or self.storage_waiting or self.released_storage:
            return
        who = await self.leader_info()
        if not who.get("leader") or who.get("storage") != "waiting":
            return
        self.released_storage = True
        log.warning("origin %s: the leader %s waits for the data directory this origin holds: "
                    "shutting down to free it", self.node_id, who["leader"])
        from streamer.timefmt import utc_iso
        self._record({"type": "cluster.storage_released", "time": utc_iso(time.time()),
                      "node": self.node_id, "leader": who["leader"]})
        self.release_storage()

    async def _edges(self) -> None:
        await self._free_storage_for_leader()
        from streamer.cluster.zonesync import parse_serves
        edges = await self.registry.nodes("edge")
        fences = [int(e.get("fence", "0") or 0) for e in edges]
        self.edges_fence = max(fences, default=self.edges_fence)
        if self.leader() and not await self.redis.exists(self.keys.tree):
            self._zones_dirty = True      # Redis restarted empty: the tree again
        serves = {e["node"]: (e.get("since", ""), parse_serves(e.get("serves")))
                  for e in edges if e.get("node") and e.get("serves")}
        serves = hold_vanished_edges(self.edge_serves, serves, edges, self._edge_expiry,
                                     time.time())
        if serves != self.edge_serves:
            moved = {z for _s, pats in serves.values() for z in pats} != \
                {z for _s, pats in self.edge_serves.values() for z in pats}
            self.edge_serves = serves
            self._zones_dirty = True
            if moved:   # who sends which zone's static destinations changed
                log.info("origin %s: edges serve %s", self.node_id,
                         {e: sorted(p) for e, (_s, p) in serves.items()})
                self._apply_tree()

    # zones: the edges' copies follow the tree (streamer.cluster.zonesync) -----------------
    def bind_zones(self, tree: Callable[[], Any], apply_tree: Callable[[], None]) -> None:
        """`tree()`: control's zone tree (None before it is read); `apply_tree()` hands it to
        the engine again (through `engine_zones`)."""
        self._zone_tree = tree
        self._apply_tree = apply_tree

    def engine_zones(self, zones: Any) -> tuple[Any, ...]:
        """The zones as this origin's engine gets them: without the static destinations a live
        edge sends."""
        from streamer.cluster.zonesync import strip_served
        return strip_served(zones, self.edge_serves)

    def zones_changed(self) -> None:
        """The tree changed (the API, the settings file, another process): tell the edges."""
        self._zones_dirty = True

    async def _zones_step(self) -> None:
        if not self._zones_dirty or not self.leader():
            return
        tree = self._zone_tree()
        if tree is None:
            return
        self._zones_dirty = False
        for kind, body in self.zonesync.plan(tree.zones, self.edge_serves):
            self.send(kind, body)
        from streamer.cluster.zonesync import tree_to_json
        try:   # for a standby that goes on air before it can open the database
            await asyncio.wait_for(self.redis.set(self.keys.tree, tree_to_json(
                tree.zones.values(), tree.groups)), 2.0)
        except Exception:   # Redis away: again at the next step
            self._zones_dirty = True
            raise

    async def read_tree(self) -> Any:
        """The zone tree the leader keeps in Redis (a ZoneTree), or None."""
        from streamer.cluster.zonesync import tree_from_json
        raw = await asyncio.wait_for(self.redis.get(self.keys.tree), 2.0)
        if raw is None:
            return None
        try:
            return tree_from_json(raw)
        except ValueError as e:
            log.warning("the zone tree in Redis is not usable: %s", e)
            return None

    def carried(self) -> set[str]:
        """Broadcasts the cluster carries on (the single-node crash recovery leaves them)."""
        return self.found_onair | set(self.onair) | {
            str(t["broadcast"]) for t in self.took_over if t.get("resumed")}

    def set_records(self, records: Any) -> None:
        """The write-ahead records, opened after a standby went on air without them: what
        happened meanwhile is recorded now."""
        self._records = records
        pending, self._unrecorded = self._unrecorded, []
        for ev in pending:
            records.put("event", {"ev": ev})

    def _record(self, ev: dict[str, Any]) -> None:
        if self._records is not None:
            self._records.put("event", {"ev": ev})
        else:
            self._unrecorded.append(ev)
            del self._unrecorded[:-1000]

    # what is on air, for a standby (streamer.cluster.onair) ---------------------------------
    async def _onair_step(self) -> None:
        self.feed.enabled = self.lease.other_holds is not True
        self.feed.fence = self.lease.fence
        await self._standing_step()
        if not self.leader():
            self._carried = False
            return
        if not self._carried:
            await self._carry_on()
            self._carried = True
        elif time.monotonic() < self._next_write:
            return
        self._next_write = time.monotonic() + ONAIR_WRITE_S
        self._take_started()
        live = {}
        for bid, e in list(self.onair.items()):
            snap = self._engine.broadcast(bid) if self._engine is not None else None
            if snap is None or snap.ended:
                self.onair.pop(bid, None)
                continue
            e.fence = self.lease.fence
            if e.start_ms is not None:
                e.pos, e.pos_ms = snap.position_s, int(time.time() * 1000)
                e.paused = snap.state == "paused"
            live[bid] = e
        await self.onair_book.write(live)

    async def _standing_step(self) -> None:
        """Log and publish a change of standing; an origin that learns another holds the lease
        stops what it has on air (the new leader carries it on from `{p}onair`), so it never
        airs in parallel with it, also on its own outputs (static destinations, receivers
        registered here, listening). Not on a mere missed renewal: Redis away or stalled must
        not silence anything, and the edges refuse a stale origin's media by its token."""
        st = "leader" if self.leader() else (
            "follower" if self.lease.other_holds is True else "unsure")
        if st == self.standing:
            return
        was, self.standing = self.standing, st
        from streamer.timefmt import utc_iso
        ev: dict[str, Any] = {"type": "cluster.leadership", "time": utc_iso(time.time()),
                              "node": self.node_id, "standing": st, "was": was,
                              "fence": self.lease.fence}
        if st == "leader":            # every edge is told every zone again
            self.zonesync.reset()
            self._zones_dirty = True
        if st == "follower":
            ev["leader"] = (await self.leader_info()).get("leader")
            ev["stopped"] = await self._yield_airtime(ev["leader"])
            for fn in self.on_follower:
                try:
                    await fn(f"leadership moved to origin {ev['leader'] or '?'}: connect again")
                except Exception:
                    log.exception("on_follower")
        self.transitions.append(ev)
        del self.transitions[:-20]
        (log.warning if st != "leader" else log.info)(
            "origin %s: %s -> %s (fencing token %d)%s", self.node_id, was, st, self.lease.fence,
            f"; {ev.get('leader')} leads, stopped here: {ev['stopped']}" if st == "follower"
            else "")
        if self._hub is not None:
            self._hub.publish(ev)
        if st != "unsure":
            self._record(ev)

    async def _yield_airtime(self, leader: str | None) -> list[str]:
        """Stop every broadcast on air here (all were aired while this origin led: a follower
        sends nothing to the edges). Live talk ends too: its page is told and reconnects."""
        from streamer.port import StopBroadcast
        self.onair.clear()
        self._started.clear()
        if self._engine is None:
            return []
        loop = asyncio.get_running_loop()
        why = (f"leadership moved to origin {leader}" if leader else "leadership lost") + \
            f": origin {self.node_id} stops what it aired (the leader carries it on)"
        talk = (f"leadership moved to origin {leader}" if leader else "leadership lost") + \
            ": live talk is not carried over; connect again and go live again"
        stopped = []
        for snap in self._engine.broadcasts():
            try:
                await loop.run_in_executor(None, self._engine.submit,
                                           StopBroadcast(snap.id, talk if snap.live else why))
            except Exception as e:   # ended meanwhile
                log.debug("stop %s: %s", snap.id, e)
                continue
            stopped.append(snap.id)
        self.yielded += stopped
        del self.yielded[:-100]
        return stopped

    async def _carry_on(self) -> None:
        """This origin just took the lease: what the last leader had on air goes on, under the
        same broadcast ids, at the offset reached by now."""
        from streamer.cluster.onair import OnAirEntry, plan_takeover
        from streamer.timefmt import utc_iso
        found = await self.onair_book.read()
        loop = asyncio.get_running_loop()
        for bid, entry in found.items():
            snap = self._engine.broadcast(bid)
            if bid in self.onair or (snap is not None and not snap.ended):
                continue   # (one that ended here, e.g. stopped when another took over, goes on)
            cmd, why = plan_takeover(entry, int(time.time() * 1000))
            rec = {"broadcast": bid, "resumed": cmd is not None, "reason": why,
                   "offset_s": getattr(cmd, "offset_s", None)}
            self.took_over.append(rec)
            if cmd is None:
                log.warning("broadcast %s not carried over: %s", bid, why)
                continue
            self._record({
                "type": "broadcast.recovered", "time": utc_iso(time.time()),
                "broadcast": bid, "level": cmd.level.label, "owner": cmd.owner,
                "zones": list(cmd.targets), "reason": f"carried on by origin "
                f"{self.node_id} after a takeover ({why})"})
            try:
                await loop.run_in_executor(None, self._engine.submit, cmd)
            except Exception as e:   # a zone gone, a file unreadable: logged, never fatal
                log.error("broadcast %s could not be carried over: %s", bid, e)
                rec.update(resumed=False, reason=f"{type(e).__name__}: {e}")
                continue
            self.onair[bid] = OnAirEntry(entry.cmd, entry.start_ms, self.lease.fence)
            self.counters["taken_over"] += 1
            log.warning("broadcast %s carried on after a takeover: %s", bid, why)

    async def _secrets(self) -> None:
        if self.secrets is not None and self.leader():
            await self.secrets.publish()

    async def start(self, engine: Any, secrets: Mapping[str, tuple[bytes, str]] | Any,
                    hub: Any, records: Any = None) -> None:
        """After the engine started: `secrets` is the receivers' (secret, zone) by id;
        `records` the write-ahead records (a takeover is recorded as `broadcast.recovered`)."""
        self.feed.rtp = engine.rtp
        self._engine = engine
        self._records = records
        try:   # what the last leader had on air is carried on by the cluster, not Recovery
            self.found_onair = set(await asyncio.wait_for(self.onair_book.read(), 2.0))
        except Exception as e:
            log.warning("origin %s: on-air state not readable from Redis (%s)", self.node_id, e)
        taps = getattr(engine, "taps", None)
        if taps is not None:
            taps.append(self.tap)
        hub.observers.append(self.observe)
        self._hub = hub
        source = secrets if callable(secrets) else (lambda: secrets)
        self.secrets = SecretsPublisher(self.redis, self.keys, self.seal, source)
        self.feed.start()
        await self.lease.step()    # a single origin leads from its first second
        s = self._stop
        self._tasks = [asyncio.create_task(c, name=n) for c, n in (
            (self.registry.run(s), "loa-cluster-registry"),
            (self.lease.run(s), "loa-cluster-lease"),
            (self._sender(), "loa-cluster-commands"),
            (_every(SECRETS_EVERY_S, s, self._secrets, "secrets"), "loa-cluster-secrets"),
            (_every(DISCOVER_EVERY_S, s, self._edges, "edges"), "loa-cluster-edges"),
            (_every(ONAIR_EVERY_S, s, self._onair_step, "onair"), "loa-cluster-onair"),
            (_every(ONAIR_EVERY_S, s, self._zones_step, "zones"), "loa-cluster-zones"))]
        log.info("origin %s: feed on udp %d, redis %s", self.node_id, self.feed.address[1],
                 self.settings.redis_url)

    def status(self) -> dict[str, Any]:
        return {"node": self.node_id, "role": "origin", "leader": self.leader(),
                "fence": self.lease.fence, "edges": self.feed.subs.nodes(),
                "lease": {"acquisitions": self.lease.state.acquisitions,
                          "losses": self.lease.state.losses, "errors": self.lease.errors,
                          "deferred_after_redis_restart": self.lease.deferred},
                **self.counters, "feed": dict(self.feed.counters),
                "feed_enabled": self.feed.enabled, "on_air": sorted(self.onair),
                "took_over": self.took_over[-20:], "standing": self.standing,
                "transitions": self.transitions[-5:], "yielded": self.yielded[-20:]}

    async def close(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.lease.release()
        await self.registry.withdraw()
        self.feed.close()
        try:
            await self.redis.aclose()
        except Exception:
            pass


# ------------------------------------------------------------------ edge
def _addr(text: Any) -> tuple[str, int] | None:
    if not text:
        return None
    return parse_hostport(str(text), "address")


class EdgeServer:
    """One edge: receivers, their SRTP and the fan-out; media from the origins."""

    def __init__(self, settings: Settings) -> None:
        check(settings)
        from streamer.cluster.commands import CommandConsumer
        from streamer.cluster.edge import EdgeNode
        from streamer.cluster.keys import Keys
        from streamer.cluster.lease import FenceGate
        from streamer.cluster.nodes import NodeRegistry, OriginsSeen, ReceiverDirectory
        from streamer import cpus
        from streamer.rtp.fanout import Fanout
        from streamer.rtp.registry import ReceiverRegistry
        self.settings = settings
        key = cluster_key(settings)
        self.node_id = node_id(settings, "edge")
        self.redis = _redis(settings)
        self.keys = Keys(settings.redis_prefix)
        self.fanout = Fanout(bind=("0.0.0.0", settings.send_port),
                             multicast_ttl=settings.multicast_ttl,
                             multicast_if=settings.multicast_if, workers=settings.fanout_workers,
                             batch=settings.fanout_batch, realtime=settings.engine_realtime,
                             cpus=tuple(sorted(cpus.RESERVED)))
        keyring = None
        if settings.srtp:
            from streamer.rtp.srtp import MediaKeyring
            keyring = MediaKeyring(time.monotonic(),
                                   rotate_every_s=settings.media_key_rotate_h * 3600)
        # one newest token for commands and media: an origin past its lease is refused for both
        self.gate = FenceGate()
        self.node = EdgeNode(self.node_id, key, [], self.fanout, keyring=keyring,
                             payload_type=settings.payload_type,
                             feed_bind=("0.0.0.0", settings.feed_port), gate=self.gate)
        self.secrets = SecretsMirror(self.redis, self.keys, SecretSeal(key))
        self.registry = ReceiverRegistry(self.secrets.lookup, keyring=keyring,
                                         heartbeat_s=settings.receiver_heartbeat_s)
        self.directory = ReceiverDirectory(self.redis, self.keys, self.node_id)
        self.nodes = NodeRegistry(self.redis, self.keys, self.node_id, "edge", self._info)
        self.origins_seen = OriginsSeen(ORIGIN_GRACE_S)
        self.consumer = CommandConsumer(self.redis, self.keys, self.node_id, self.apply,
                                        gate=self.gate, block_ms=500)
        self.counters = {"commands_applied": 0, "commands_unknown": 0, "moved_in": 0}
        self.since = str(time.time_ns())   # an origin tells a restarted edge every zone again
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)   # broadcasts/alerts seen
        self.link: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def _info(self) -> dict[str, Any]:
        return {"media": f"{self.settings.node_address}:{self.media_port}",
                "feed": f"{self.settings.node_address}:{self.node.address[1]}",
                "receivers": sum(1 for r in self._receivers() if r.get("online")),
                "zones": sorted(self.node.wanted), "fence": self.gate.highest,
                "serves": ",".join(self.settings.serve_zones), "since": self.since}

    @property
    def media_port(self) -> int:
        return int(self.node.media_socket.getsockname()[1])

    def _receivers(self) -> list[dict[str, Any]]:
        st = self.registry.status()
        return st if isinstance(st, list) else []

    # commands ------------------------------------------------------------------------------
    def apply(self, cmd: Any) -> None:
        body = cmd.body
        edges = body.get("edges")
        if isinstance(edges, list) and self.node_id not in edges:
            return
        try:
            if cmd.kind == "zone.set":
                uni = [a for a in (_addr(u) for u in body.get("unicast") or []) if a]
                pt = {a: int(ms) for u, ms in dict(body.get("ptime") or {}).items()
                      if (a := _addr(u)) is not None}
                self.node.set_static(str(body["zone"]), _addr(body.get("multicast")), uni, pt)
            elif cmd.kind == "zone.drop":
                self.node.drop_zone(str(body["zone"]))
            elif cmd.kind in ("broadcast.start", "broadcast.stop", "alert"):
                self.recent.append({"kind": cmd.kind, "fence": cmd.fence,
                                    "id": body.get("id") or body.get("alert")})
            else:
                self.counters["commands_unknown"] += 1
                return
        except (KeyError, ValueError) as e:
            log.warning("command %s (%s) not applied: %s", cmd.id, cmd.kind, e)
            self.counters["commands_unknown"] += 1
            return
        self.counters["commands_applied"] += 1

    # loops ---------------------------------------------------------------------------------
    async def _discover(self) -> None:
        await self.secrets.refresh()
        origins = await self.nodes.nodes("origin")
        found = [a for a in (_addr(o.get("feed")) for o in origins) if a]
        keep = self.origins_seen.update(found, time.monotonic())
        if keep and set(keep) != set(self.node.origins):
            log.info("edge %s: origins %s (listed now: %s)", self.node_id, keep, found)
            self.node.set_origins(keep)
            self.node.subscribe_now()

    async def _claims(self) -> None:
        for st in self._receivers():
            if not st.get("online"):
                continue
            moved = await self.directory.claim(str(st["id"]), str(st["zone"]),
                                               {"state": st.get("playback")})
            if moved:
                self.counters["moved_in"] += 1

    async def start(self) -> None:
        from streamer.rtp.link import start_receiver_endpoint
        try:
            await asyncio.wait_for(self._discover(), 3.0)
        except Exception as e:
            log.warning("edge %s: Redis not reachable at start (%s); retrying", self.node_id, e)
        self.node.start()
        self.link = await start_receiver_endpoint(self.node, self.registry)
        s = self._stop
        self._tasks = [asyncio.create_task(c, name=n) for c, n in (
            (self.nodes.run(s), "loa-edge-registry"),
            (self.consumer.run(s), "loa-edge-commands"),
            (_every(DISCOVER_EVERY_S, s, self._discover, "discover"), "loa-edge-discover"),
            (_every(CLAIMS_EVERY_S, s, self._claims, "claims"), "loa-edge-claims"))]

    def status(self) -> dict[str, Any]:
        return {**self.node.stats(), **self.counters, "ok": True,
                "media_port": self.media_port, "feed_port": self.node.address[1],
                "origins": [f"{h}:{p}" for h, p in self.node.origins],
                "secrets": len(self.secrets.secrets),
                "commands_refused": self.gate.refused, "fence": self.gate.highest,
                "commands_errors": self.consumer.errors, "recent": list(self.recent)}

    async def close(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.link is not None:
            self.link.close()
        await self.nodes.withdraw()
        self.node.close()
        self.fanout.close()
        try:
            await self.redis.aclose()
        except Exception:
            pass


async def serve_edge(settings: Settings, ready: asyncio.Event | None = None,
                     stop: asyncio.Event | None = None) -> None:
    """`loa serve --role edge`: the edge and an HTTP `/health` (its status as JSON)."""
    import signal

    from aiohttp import web
    edge = EdgeServer(settings)
    await edge.start()

    async def health(_req: web.Request) -> web.Response:
        return web.json_response(edge.status())

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/health", health)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = settings.http.rpartition(":")
    try:
        await web.TCPSite(runner, host or "127.0.0.1", int(port), reuse_address=True).start()
        print(f"loa: edge {edge.node_id} serving receivers on udp {edge.media_port}, "
              f"feed udp {edge.node.address[1]}, health http://{settings.http}/health",
              flush=True)
        if ready is not None:
            ready.set()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
    finally:
        print("loa: shutting down", flush=True)
        await runner.cleanup()
        await edge.close()
