"""The single-node default stays as it was (issue 19): `loa serve` with role `all` and no Redis
builds and starts the whole server without importing anything of the cluster (redis, the
cluster modules, the standby), in a fresh interpreter."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

PROBE = """
import asyncio, sys
from control.settings import Settings
from control.app import create_app
import control.cli

async def main():
    app = create_app(Settings(data_dir=sys.argv[1], send_port=0, http="127.0.0.1:0"))
    server = app["loa"]
    await server.start()
    await server.close()

asyncio.run(main())
bad = sorted(m for m in sys.modules if m == "redis" or m.startswith(
    ("redis.", "streamer.cluster", "control.cluster", "control.standby")))
print("CLUSTER-MODULES", bad)
"""


def test_all_without_redis_imports_nothing_of_the_cluster(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "data")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CLUSTER-MODULES []" in out.stdout, (out.stdout, out.stderr[-2000:])
