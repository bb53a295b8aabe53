"""A `loa receiver --server` inside a network namespace behind iptables MASQUERADE (both built
here, removed afterwards): it registers, plays, and keeps playing after its address changes.
The host has no route to the receiver's private network, so media can only arrive through the
NAT mapping the receiver's own heartbeats opened."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import require_root, require_tool
from tests.integration.conftest import until
from tests.integration.test_rtp_link import SECRETS, FieldServer

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TAG = f"{os.getpid() % 100000}"
NS_NAT, NS_RX = f"loa-nat-{TAG}", f"loa-rx-{TAG}"
HOST_IF, NAT_OUT, NAT_IN, RX_IF = f"lh{TAG}", f"lo{TAG}", f"li{TAG}", f"lr{TAG}"
HOST_IP, NAT_IP, NAT_IP2 = "10.201.0.1", "10.201.0.2", "10.201.0.3"


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=20)


def nat_network():
    require_root("it creates network namespaces and an iptables NAT")
    for tool in ("ip", "iptables"):
        require_tool(tool, "builds the NAT test network")
    steps = [
        ("ip", "netns", "add", NS_NAT), ("ip", "netns", "add", NS_RX),
        ("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NAT_OUT),
        ("ip", "link", "set", NAT_OUT, "netns", NS_NAT),
        ("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_IF), ("ip", "link", "set", HOST_IF, "up"),
        ("ip", "netns", "exec", NS_NAT, "ip", "addr", "add", f"{NAT_IP}/24", "dev", NAT_OUT),
        ("ip", "netns", "exec", NS_NAT, "ip", "addr", "add", f"{NAT_IP2}/24", "dev", NAT_OUT),
        ("ip", "netns", "exec", NS_NAT, "ip", "link", "set", NAT_OUT, "up"),
        ("ip", "netns", "exec", NS_NAT, "ip", "link", "set", "lo", "up"),
        ("ip", "netns", "exec", NS_NAT, "ip", "link", "add", NAT_IN, "type", "veth", "peer",
         "name", RX_IF),
        ("ip", "netns", "exec", NS_NAT, "ip", "link", "set", RX_IF, "netns", NS_RX),
        ("ip", "netns", "exec", NS_NAT, "ip", "addr", "add", "10.202.0.1/24", "dev", NAT_IN),
        ("ip", "netns", "exec", NS_NAT, "ip", "link", "set", NAT_IN, "up"),
        ("ip", "netns", "exec", NS_NAT, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
        ("ip", "netns", "exec", NS_NAT, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o",
         NAT_OUT, "-j", "MASQUERADE"),
        ("ip", "netns", "exec", NS_RX, "ip", "addr", "add", "10.202.0.2/24", "dev", RX_IF),
        ("ip", "netns", "exec", NS_RX, "ip", "link", "set", RX_IF, "up"),
        ("ip", "netns", "exec", NS_RX, "ip", "link", "set", "lo", "up"),
        ("ip", "netns", "exec", NS_RX, "ip", "route", "add", "default", "via", "10.202.0.1"),
    ]
    for cmd in steps:
        r = sh(*cmd, check=False)
        if r.returncode != 0:
            cleanup()
            pytest.fail(f"cannot build the NAT test network ({' '.join(cmd)}): "
                        f"{r.stderr.strip()}", pytrace=False)


def cleanup():
    sh("ip", "netns", "del", NS_RX, check=False)
    sh("ip", "netns", "del", NS_NAT, check=False)     # takes its veths and iptables rules
    sh("ip", "link", "del", HOST_IF, check=False)


@pytest.fixture
def nat():
    nat_network()
    try:
        yield
    finally:
        cleanup()
        assert NS_NAT not in sh("ip", "netns", "list").stdout


async def test_receiver_behind_masquerade_registers_plays_and_survives_address_change(
        nat, tmp_path):
    # the host cannot reach the receiver's private network: only the NAT mapping can
    assert "10.202." not in sh("ip", "route").stdout
    srv = await FieldServer(host=HOST_IP).start()
    stats = tmp_path / "rx.json"
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", NS_RX, sys.executable, "-m", "loa.cli", "receiver",
        "--server", f"{srv.addr[0]}:{srv.addr[1]}", "--id", "rx1",
        "--secret", SECRETS["rx1"][0].decode(), "--out", "null", "--duration", "9",
        "--register-retry", "0.3", "--stats-json", str(stats),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        srv.tone(["z1"], seconds=30)
        await until(lambda: (srv.registry.status("rx1") or {}).get("online"), 6, "registration")
        first = srv.registry.status("rx1")["address"]
        assert first.startswith(NAT_IP + ":"), first            # seen from outside the NAT
        await until(lambda: ((srv.registry.status("rx1") or {}).get("playing") or {})
                    .get("level") == "normal", 5, "a report saying it plays")
        t_change = time.monotonic()
        # a 4G reconnect: new private address and a new public address for new mappings
        sh("ip", "netns", "exec", NS_NAT, "iptables", "-t", "nat", "-R", "POSTROUTING", "1",
           "-o", NAT_OUT, "-j", "SNAT", "--to-source", NAT_IP2)
        sh("ip", "netns", "exec", NS_RX, "ip", "addr", "del", "10.202.0.2/24", "dev", RX_IF)
        sh("ip", "netns", "exec", NS_RX, "ip", "addr", "add", "10.202.0.3/24", "dev", RX_IF)
        sh("ip", "netns", "exec", NS_RX, "ip", "route", "replace", "default", "via",
           "10.202.0.1")
        await until(lambda: srv.registry.status("rx1")["address"].startswith(NAT_IP2 + ":"),
                    5, "the new public address")
        moved_after = time.monotonic() - t_change
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        snap = json.loads(stats.read_text())
        assert snap["srtp"] and snap["registered"] and snap["srtp_failed"] == 0
        # 9 s run: registration + jitter buffer + the move cost well under 2 s of audio
        assert snap["audio_seconds"] > 6.5, (snap, moved_after)
        assert srv.registry.status("rx1")["online"]
        assert any(e["type"] == "receiver.address_changed" for e in srv.events)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        srv.stop()
