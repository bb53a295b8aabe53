"""Provisioning from the CLI does what the README says (issue 20).

A receiver provisioned with `loa receivers provision` while `loa serve` runs is registered by the
running server, however soon after its start it was written; offline provisioning works from the
settings file alone; CLI-made receivers are recorded as `origin: cli`.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.conftest import LOA, ROOT, wait_for

pytestmark = pytest.mark.integration

TOML = """
[[zones]]
id = "z1"
name = "Xã Nhơn Lý"
"""


def provision(tmp_path, *args: str) -> tuple[int, dict | None, str]:
    p = subprocess.run(LOA + ["receivers", "provision", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    try:
        out = json.loads(p.stdout) if p.returncode == 0 else None
    except json.JSONDecodeError:
        out = None
    return p.returncode, out, p.stdout + p.stderr


def test_cli_provision_right_after_start_registers(serve, receivers, tmp_path):
    # the repro: serve, wait for /health (the fixture does), provision at once, run the receiver
    server = serve(TOML, env={"LOA_RECEIVER_HEARTBEAT_S": "1"})
    rc, rx, text = provision(tmp_path, "--config", str(server.cfg), "--data-dir",
                             str(tmp_path / "data"), "--zone", "z1", "--id", "early")
    assert rc == 0, text
    assert rx["id"] == "early", rx
    st, health = server.request("GET", "/api/v1/health")
    r = receivers(["--server", f"127.0.0.1:{health['receiver_port']}", "--id", "early",
                   f"--secret={rx['secret']}", "--register-retry", "1"], "early")

    def online():
        st, body = server.request("GET", "/api/v1/receivers/early")
        assert st == 200, body
        live = body.get("live") or {}
        return body if live.get("state") == "online" else None
    try:
        wait_for("the CLI-provisioned receiver to register", online, timeout=15)
    except AssertionError:
        pytest.fail(f"receiver never registered\n--- receiver:\n{r.stop()}\n"
                    f"--- server:\n{server.output()[-3000:]}")
    assert rx["origin"] == "cli", rx
    st, body = server.request("GET", "/api/v1/receivers/early")
    assert body["origin"] == "cli", body


def test_offline_provision_from_the_settings_file_alone(tmp_path):
    # a fresh data directory, never served: the zones come from the settings file
    cfg = tmp_path / "loa.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n' + TOML, encoding="utf-8")
    rc, rx, text = provision(tmp_path, "--config", str(cfg), "--zone", "z1", "--id", "off-1")
    assert rc == 0, text
    assert rx["id"] == "off-1" and rx["zone"] == "z1" and rx["origin"] == "cli", rx
    # an unknown zone is still refused, naming it
    rc, rx, text = provision(tmp_path, "--config", str(cfg), "--zone", "nope")
    assert rc == 1 and "unknown_zone" in text, text


def test_field_receiver_binds_the_interface_that_routes_to_the_server(tmp_path):
    import base64
    import os
    import re
    import socket
    helptext = subprocess.run(LOA + ["receiver", "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60).stdout
    assert "0.0.0.0:0" in " ".join(helptext.split()), helptext
    # a "server" on loopback that never answers: the receiver is tied to the interface that
    # routes there (lo), not to every interface
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
        p = subprocess.run(LOA + ["receiver", "--server", f"127.0.0.1:{srv.getsockname()[1]}",
                                  "--id", "rt", f"--secret={secret}", "--out", "null",
                                  "--duration", "0.5"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert re.search(r"rt on udp 0\.0\.0\.0:\d+ on lo,", p.stdout + p.stderr), p.stdout + p.stderr
