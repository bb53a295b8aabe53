"""Control plane on a real `loa serve` with a real SQLite file: restart, roles, uploads, audit."""
from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from streamer.ingest.tones import write_tone_wav
from tests.integration.conftest import free_udp_ports

pytestmark = pytest.mark.integration

ADMIN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def toml(port: int, extra: str = "", commune_name: str = "Xã Nhơn Lý") -> str:
    return f"""
{extra}
[[zones]]
id = "tinh"
name = "Tỉnh"
level = "province"

[[zones]]
id = "xa-a"
name = "{commune_name}"
parent = "tinh"
unicast = ["127.0.0.1:{port}"]

[[zones]]
id = "thon-a1"
parent = "xa-a"

[[zones]]
id = "xa-b"
parent = "tinh"

[[groups]]
id = "ven-bien"
zones = ["xa-a", "xa-b"]

[[receivers]]
id = "static-1"
zone = "thon-a1"
link = "sim"
lat = 13.9
lon = 109.2
"""


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                f"{v}\r\n").encode()
    if file is not None:
        name, data = file
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(server, path: Path | None = None, data: bytes | None = None, name: str = "a.wav",
           headers=AUTH, **fields):
    body, h = multipart(fields, (name, data if data is not None else path.read_bytes()))
    return server.request("POST", "/api/v1/media", raw=body, headers={**h, **headers})


def wait_state(server, bid: str, states, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, b = server.request("GET", f"/api/v1/broadcasts/{bid}", headers=AUTH)
        if b.get("state") in states:
            return b
        time.sleep(0.1)
    raise AssertionError(f"broadcast {bid} never reached {states}: {b}")


def kill_hard(server) -> None:
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(5)


def incoming(tmp_path: Path) -> list[Path]:
    d = tmp_path / "data" / "media" / ".incoming"
    return list(d.iterdir()) if d.exists() else []


@pytest.fixture
def tone(tmp_path):
    p = tmp_path / "tone.wav"
    write_tone_wav(p, 800, 1.0)
    return p


def test_restart_keeps_state_and_marks_interrupted(serve, tmp_path, tone):
    port = free_udp_ports(1)[0]
    env = {"LOA_ADMIN_TOKEN": ADMIN}
    s = serve(toml(port), env)
    r = s.request
    # zones: API-made, CSV import, move
    assert r("POST", "/api/v1/zones", {"id": "thon-b1", "parent": "xa-b", "language": "bahnar"},
             headers=AUTH)[0] == 201
    csv = "code,name,parent_code,level\nH01,Huyện Một,tinh,district\nX011,Xã Mười Một,H01,commune\n"
    st, res = r("POST", "/api/v1/zones/import", raw=csv.encode(),
                headers={**AUTH, "Content-Type": "text/csv"})
    assert st == 200 and res["created"] == 2, res
    assert r("POST", "/api/v1/zones/thon-b1/move", {"parent": "X011"}, headers=AUTH)[0] == 200
    # receivers
    st, rx = r("POST", "/api/v1/receivers", {"zone": "X011", "address": "127.0.0.1:5999",
                                             "link": "wifi", "notes": "chợ"}, headers=AUTH)
    assert st == 201 and len(rx["secret"]) >= 40
    st, one = r("GET", f"/api/v1/receivers/{rx['id']}", headers=AUTH)
    assert "secret" not in one and "secret_enc" not in one
    # a static receiver's address becomes a unicast destination of its zone
    st, z = r("GET", "/api/v1/zones/X011", headers=AUTH)
    assert "127.0.0.1:5999" in z["unicast"]
    # media, users, tokens
    st, med = upload(s, tone, title="Bản tin sáng", language="cham", tags="sang,tin")
    assert st == 201, med
    assert med["duration_s"] == pytest.approx(1.0, abs=0.05) and med["language"] == "cham"
    assert med["loudness_lufs"] is not None and med["format"]
    st, u = r("POST", "/api/v1/users", {"username": "op", "role": "operator", "scope": ["xa-a"],
                                        "password": "mật-khẩu-dài"}, headers=AUTH)
    assert st == 201
    st, tok = r("POST", f"/api/v1/users/{u['id']}/tokens", {"name": "ci"}, headers=AUTH)
    op = {"Authorization": f"Bearer {tok['token']}"}
    # a long broadcast from the library, on air when the process dies
    st, b = r("POST", "/api/v1/broadcasts", {"zones": ["xa-a"], "repeat": 50,
                                             "source": {"kind": "media", "id": med["id"]}}, headers=op)
    assert st == 201, b
    assert b["owner"] == "op" and b["source"]["media_id"] == med["id"]
    wait_state(s, b["id"], ("playing",))
    time.sleep(0.3)  # let the as-run writer catch up
    st, ar = r("GET", f"/api/v1/asrun?broadcast={b['id']}", headers=AUTH)
    assert "broadcast.started" in [e["type"] for e in ar["events"]]
    kill_hard(s)

    # the file renames the commune; the API-made zones stay
    s2 = serve(toml(port, commune_name="Phường Nhơn Lý"), env)
    r = s2.request
    st, zs = r("GET", "/api/v1/zones", headers=AUTH)
    ids = {z["id"]: z for z in zs["zones"]}
    assert {"tinh", "xa-a", "thon-a1", "xa-b", "thon-b1", "H01", "X011"} <= set(ids)
    assert ids["xa-a"]["name"] == "Phường Nhơn Lý"
    assert ids["thon-b1"]["parent"] == "X011" and ids["thon-b1"]["language"] == "bahnar"
    assert {"id": "ven-bien", "zones": ["xa-a", "xa-b"]} in zs["groups"]
    st, rxs = r("GET", "/api/v1/receivers", headers=AUTH)
    assert {x["id"] for x in rxs["receivers"]} == {"static-1", rx["id"]}
    st, ml = r("GET", "/api/v1/media", headers=AUTH)
    assert [x["id"] for x in ml["media"]] == [med["id"]] and ml["media"][0]["title"] == "Bản tin sáng"
    assert r("GET", "/api/v1/session", headers=op)[1]["name"] == "op"  # token survived
    st, old = r("GET", f"/api/v1/broadcasts/{b['id']}", headers=AUTH)
    assert st == 200 and old["state"] == "interrupted", old
    st, past = r("GET", "/api/v1/broadcasts?past=1", headers=AUTH)
    assert b["id"] in [x["id"] for x in past["broadcasts"]]
    st, ar = r("GET", f"/api/v1/asrun?broadcast={b['id']}", headers=AUTH)
    types = [e["type"] for e in ar["events"]]
    assert types[0] == "broadcast.created" and types[-1] == "broadcast.interrupted"
    st, aud = r("GET", "/api/v1/audit", headers=AUTH)
    actions = [(a["action"], a["actor"], a["status"]) for a in aud["entries"]]
    assert ("zones.write", "admin-token", 201) in actions
    assert ("broadcasts.start", "op", 201) in actions
    # starting it again from the library still works after the restart
    st, b2 = r("POST", "/api/v1/broadcasts", {"zones": ["thon-a1"],
                                              "source": {"kind": "media", "id": med["id"]}}, headers=op)
    assert st == 201, b2
    # a clean shutdown records `stopped`, not `interrupted`
    s2.stop()
    s3 = serve(toml(port), env)
    st, b2x = s3.request("GET", f"/api/v1/broadcasts/{b2['id']}", headers=AUTH)
    assert b2x["state"] in ("stopped", "finished"), b2x


def test_bootstrap_mode_ends_when_a_user_exists(serve):
    s = serve(toml(free_udp_ports(1)[0]))
    assert s.request("GET", "/api/v1/health")[1]["bootstrap_mode"] is True
    assert "LOCAL BOOTSTRAP MODE" in s.output()
    st, _ = s.request("POST", "/api/v1/zones", {"id": "z-anon"})
    assert st == 201  # anonymous from loopback acts as admin...
    st, u = s.request("POST", "/api/v1/users", {"username": "boss", "role": "admin",
                                                "password": "correct horse"})
    assert st == 201
    # ...until the first account exists
    st, err = s.request("POST", "/api/v1/zones", {"id": "z-anon2"})
    assert st == 401 and err["error"]["code"] == "unauthenticated"
    assert s.request("GET", "/api/v1/zones")[0] == 401
    assert s.request("GET", "/api/v1/health")[0] == 200
    # password login: session cookie
    st, err = s.request("POST", "/api/v1/session", {"username": "boss", "password": "wrong!!!"})
    assert st == 401
    import urllib.request
    req = urllib.request.Request(s.url + "/api/v1/session", method="POST",
                                 data=b'{"username":"boss","password":"correct horse"}',
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    sid = cookie.split(";")[0]
    st, me = s.request("GET", "/api/v1/session", headers={"Cookie": sid})
    assert st == 200 and me["name"] == "boss" and me["via"] == "session"
    assert s.request("POST", "/api/v1/zones", {"id": "z-cookie"}, headers={"Cookie": sid})[0] == 201
    assert s.request("DELETE", "/api/v1/session", headers={"Cookie": sid})[0] == 200
    assert s.request("GET", "/api/v1/zones", headers={"Cookie": sid})[0] == 401
    # rate limit: the 6th failure in a row is told to wait, even with the right password after
    for _ in range(5):
        s.request("POST", "/api/v1/session", {"username": "boss", "password": "nope-nope"})
    st, err = s.request("POST", "/api/v1/session", {"username": "boss", "password": "correct horse"})
    assert st == 429 and err["error"]["code"] == "too_many_attempts"
    st, err = s.request("POST", "/api/v1/zones", {"id": "x"}, headers={"Authorization": "Bearer loa_x_y"})
    assert st == 401 and err["error"]["code"] == "invalid_token"


def test_admin_token_means_nothing_anonymous(serve):
    s = serve(toml(free_udp_ports(1)[0]), {"LOA_ADMIN_TOKEN": ADMIN})
    assert s.request("GET", "/api/v1/health")[1]["bootstrap_mode"] is False
    for method, path, body in [("POST", "/api/v1/broadcasts", {"zones": ["xa-a"], "source": {"kind": "tone"}}),
                               ("POST", "/api/v1/zones", {"id": "q"}),
                               ("GET", "/api/v1/zones", None), ("GET", "/api/v1/audit", None)]:
        st, err = s.request(method, path, body)
        assert st == 401, (path, err)
    st, aud = s.request("GET", "/api/v1/audit", headers=AUTH)
    refused = [a for a in aud["entries"] if a["status"] == 401]
    assert len(refused) == 4 and all(a["actor"] == "anonymous" for a in refused)
    assert s.request("GET", "/api/v1/zones/xa-a/sdp")[0] == 200  # stock RTP clients need no login


ROLE_USERS = {
    "admin": ("admin", []),
    "operator": ("operator", ["xa-a"]),
    "official": ("official", ["thon-a1"]),
    "alert_authority": ("alert_authority", []),
    "viewer": ("viewer", []),
}


def test_role_action_matrix(serve, tone):
    s = serve(toml(free_udp_ports(1)[0]), {"LOA_ADMIN_TOKEN": ADMIN})
    r = s.request
    hdr = {}
    for name, (role, scope) in ROLE_USERS.items():
        st, u = r("POST", "/api/v1/users", {"username": name, "role": role, "scope": scope}, headers=AUTH)
        assert st == 201, u
        st, t = r("POST", f"/api/v1/users/{u['id']}/tokens", {}, headers=AUTH)
        hdr[name] = {"Authorization": f"Bearer {t['token']}"}
    st, med = upload(s, tone)
    assert st == 201
    rx_n = iter(range(100))
    zone_n = iter(range(100))

    def tone_b(zones, level="normal"):
        return {"zones": zones, "level": level, "source": {"kind": "tone", "seconds": 30}}

    # (description, method, path, body-or-callable) -> roles that may
    cases = [
        ("read zones", "GET", "/api/v1/zones", None, set(ROLE_USERS)),
        ("create zone", "POST", "/api/v1/zones", lambda: {"id": f"z{next(zone_n)}"}, {"admin"}),
        ("read receivers", "GET", "/api/v1/receivers", None, {"admin", "operator", "viewer"}),
        ("provision receiver", "POST", "/api/v1/receivers",
         lambda: {"zone": "xa-b", "id": f"rx{next(rx_n)}"}, {"admin"}),
        ("read media", "GET", "/api/v1/media", None, set(ROLE_USERS)),
        # the admin's upload is province-wide: a commune's operator may not change it (issue 13)
        ("tag province media", "PATCH", f"/api/v1/media/{med['id']}", {"tags": ["x"]}, {"admin"}),
        ("normal in commune A", "POST", "/api/v1/broadcasts", tone_b(["xa-a"]),
         {"admin", "operator"}),
        ("normal in village A1", "POST", "/api/v1/broadcasts", tone_b(["thon-a1"]),
         {"admin", "operator", "official"}),
        ("priority in village A1", "POST", "/api/v1/broadcasts", tone_b(["thon-a1"], "priority"),
         {"admin", "operator", "official"}),
        ("normal in commune B", "POST", "/api/v1/broadcasts", tone_b(["xa-b"]), {"admin"}),
        ("emergency in commune B", "POST", "/api/v1/broadcasts", tone_b(["xa-b"], "emergency"),
         {"admin", "alert_authority"}),
        ("emergency everywhere", "POST", "/api/v1/broadcasts", tone_b(["tinh"], "emergency"),
         {"admin", "alert_authority"}),
        ("group with commune B", "POST", "/api/v1/broadcasts", tone_b(["ven-bien"]), {"admin"}),
        ("raw file path", "POST", "/api/v1/broadcasts",
         {"zones": ["thon-a1"], "source": {"kind": "file", "path": str(tone)}}, set()),
        ("read broadcasts", "GET", "/api/v1/broadcasts?past=1", None, set(ROLE_USERS)),
        ("read as-run", "GET", "/api/v1/asrun", None, set(ROLE_USERS)),
        ("list users", "GET", "/api/v1/users", None, {"admin"}),
        ("create user", "POST", "/api/v1/users",
         lambda: {"username": f"u{next(zone_n)}", "role": "viewer"}, {"admin"}),
        ("read audit", "GET", "/api/v1/audit", None, {"admin"}),
    ]
    for desc, method, path, body, allowed in cases:
        for role in ROLE_USERS:
            b = body() if callable(body) else body
            st, resp = r(method, path, b, headers=hdr[role])
            if role in allowed:
                assert 200 <= st < 300, (desc, role, st, resp)
                if path == "/api/v1/broadcasts" and method == "POST":
                    r("DELETE", f"/api/v1/broadcasts/{resp['id']}", headers=AUTH)
            else:
                assert st == 403, (desc, role, st, resp)
                assert resp["error"]["code"] in ("forbidden", "out_of_scope", "raw_path_forbidden",
                                                 "path_not_allowed", "media_out_of_scope")
        st, _ = r(method, path, body() if callable(body) else body)
        assert st == 401, desc  # and nobody anonymous
    # raw paths: admin-token is admin, but no media_dirs configured → refused too
    st, err = r("POST", "/api/v1/broadcasts", {"zones": ["xa-a"], "source": {"kind": "file", "path": str(tone)}},
                headers=AUTH)
    assert st == 403 and err["error"]["code"] == "path_not_allowed"
    # stopping: the official may stop its own, not the operator's; the operator may stop in scope
    st, mine = r("POST", "/api/v1/broadcasts", tone_b(["thon-a1"]), headers=hdr["official"])
    st, theirs = r("POST", "/api/v1/broadcasts", tone_b(["xa-a"]), headers=hdr["operator"])
    assert r("DELETE", f"/api/v1/broadcasts/{theirs['id']}", headers=hdr["official"])[0] == 403
    assert r("DELETE", f"/api/v1/broadcasts/{theirs['id']}", headers=hdr["viewer"])[0] == 403
    assert r("DELETE", f"/api/v1/broadcasts/{mine['id']}", headers=hdr["official"])[0] == 200
    assert r("DELETE", f"/api/v1/broadcasts/{theirs['id']}", headers=hdr["operator"])[0] == 200
    # disable and rotate
    st, users = r("GET", "/api/v1/users", headers=AUTH)
    viewer = next(u for u in users["users"] if u["username"] == "viewer")
    st, toks = r("GET", f"/api/v1/users/{viewer['id']}/tokens", headers=AUTH)
    tid = toks["tokens"][0]["id"]
    st, new = r("POST", f"/api/v1/tokens/{tid}/rotate", headers=AUTH)
    assert st == 201 and new["replaces"] == tid
    assert r("GET", "/api/v1/zones", headers=hdr["viewer"])[0] == 401
    nh = {"Authorization": f"Bearer {new['token']}"}
    assert r("GET", "/api/v1/zones", headers=nh)[0] == 200
    assert r("PATCH", f"/api/v1/users/{viewer['id']}", {"disabled": True}, headers=AUTH)[0] == 200
    assert r("GET", "/api/v1/zones", headers=nh)[0] == 401
    # every refusal is in the audit log, with who and from where
    st, aud = r("GET", "/api/v1/audit?limit=10000", headers=AUTH)
    denied = [a for a in aud["entries"] if a["status"] == 403]
    assert {a["actor"] for a in denied} >= {"operator", "official", "alert_authority", "viewer"}
    assert all(a["address"] == "127.0.0.1" for a in denied)
    assert any(a["action"] == "audit.read" and a["actor"] == "viewer" for a in denied)


def test_zone_rules_and_bad_input(serve):
    s = serve(toml(free_udp_ports(1)[0]), {"LOA_ADMIN_TOKEN": ADMIN})
    r = s.request
    st, err = r("DELETE", "/api/v1/zones/thon-a1", headers=AUTH)
    assert st == 409 and err["error"]["code"] == "zone_has_receivers"
    st, err = r("DELETE", "/api/v1/zones/xa-a", headers=AUTH)
    assert st == 409 and err["error"]["code"] == "zone_has_children"
    st, err = r("POST", "/api/v1/zones/tinh/move", {"parent": "thon-a1"}, headers=AUTH)
    assert st == 409 and err["error"]["code"] == "invalid_tree"
    assert r("POST", "/api/v1/receivers/static-1/move", {"zone": "xa-b"}, headers=AUTH)[0] == 200
    st, lst = r("GET", "/api/v1/receivers?zone=xa-a", headers=AUTH)
    assert lst["receivers"] == []
    st, lst = r("GET", "/api/v1/receivers?zone=tinh", headers=AUTH)  # subtree filter
    assert [x["id"] for x in lst["receivers"]] == ["static-1"]
    assert r("DELETE", "/api/v1/zones/thon-a1", headers=AUTH)[0] == 200
    assert r("POST", "/api/v1/receivers/static-1/retire", headers=AUTH)[0] == 200
    st, lst = r("GET", "/api/v1/receivers?status=retired", headers=AUTH)
    assert [x["id"] for x in lst["receivers"]] == ["static-1"]
    assert r("DELETE", "/api/v1/zones/xa-b", headers=AUTH)[0] == 200  # retired ones don't count
    st, g = r("GET", "/api/v1/groups", headers=AUTH)
    assert g["groups"][0]["zones"] == ["xa-a"]
    # a bad CSV changes nothing (all or nothing)
    bad = "code,name,parent_code,level\nA1,A,tinh,district\nA2,B,nowhere,commune\n"
    st, err = r("POST", "/api/v1/zones/import", raw=bad.encode(), headers={**AUTH, "Content-Type": "text/csv"})
    assert st == 409 and "nowhere" in err["error"]["message"]
    assert r("GET", "/api/v1/zones/A1", headers=AUTH)[0] == 404
    for raw in (b"", b"\xff\xfe", b"code;name\n1;2", b"code,name,parent_code,level\n"):
        st, err = r("POST", "/api/v1/zones/import", raw=raw, headers={**AUTH, "Content-Type": "text/csv"})
        assert 400 <= st < 500 and err["error"]["message"], raw
    for body in ({"id": "../x"}, {"id": "ok", "multicast": "10.0.0.1:5000"}, {"id": "ok", "zzz": 1},
                 {"id": "ok", "parent": "nope"}, {"id": "ok", "unicast": ["bad"]}, [1]):
        st, err = r("POST", "/api/v1/zones", body, headers=AUTH)
        assert st in (404, 409, 422), (body, st, err)
        assert "Traceback" not in str(err)
    assert r("GET", "/api/v1/users/abc", headers=AUTH)[0] == 404
    assert r("PATCH", "/api/v1/users/99999", {"disabled": True}, headers=AUTH)[0] == 404
    assert r("POST", "/api/v1/tokens/nope/rotate", headers=AUTH)[0] == 404


def test_uploads_limits_truncation_traversal_and_in_use(serve, tmp_path, tone):
    media_ok = tmp_path / "programmes"
    media_ok.mkdir()
    (media_ok / "ok.wav").write_bytes(tone.read_bytes())
    secret = tmp_path / "secret.wav"
    secret.write_bytes(tone.read_bytes())
    (media_ok / "link.wav").symlink_to(secret)
    extra = f'max_upload_mb = 1\nmedia_dirs = ["{media_ok}"]'
    s = serve(toml(free_udp_ports(1)[0], extra=extra), {"LOA_ADMIN_TOKEN": ADMIN})
    r = s.request
    # over the limit
    st, err = upload(s, data=os.urandom(1_300_000))
    assert st == 413 and err["error"]["code"] == "upload_too_large"
    # not audio
    st, err = upload(s, data=os.urandom(50_000), name="x.mp3")
    assert st == 422 and err["error"]["code"] == "unsupported_media"
    # no file field / wrong type
    body, h = multipart({"title": "t"}, None)
    st, err = r("POST", "/api/v1/media", raw=body, headers={**AUTH, **h})
    assert st == 422 and err["error"]["code"] == "missing_file"
    assert r("POST", "/api/v1/media", {"a": 1}, headers=AUTH)[0] == 415
    # closing boundary missing: incomplete
    body, h = multipart({}, ("t.wav", tone.read_bytes()))
    st, err = r("POST", "/api/v1/media", raw=body[: len(body) // 2], headers={**AUTH, **h})
    assert st == 400 and err["error"]["code"] == "truncated_upload", err
    # the client goes away in the middle
    body, h = multipart({}, ("t.wav", tone.read_bytes()))
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall((f"POST /api/v1/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
                   f"Content-Type: {h['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                  + body[: len(body) // 3])
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while incoming(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert incoming(tmp_path) == []
    st, ml = r("GET", "/api/v1/media", headers=AUTH)
    assert ml["media"] == []
    assert [p.name for p in (tmp_path / "data" / "media").iterdir()] == [".incoming"]
    # a path trick in the file name is only a display name
    st, med = upload(s, tone, name="../../../etc/passwd")
    assert st == 201 and med["filename"] == "passwd"
    stored = list((tmp_path / "data" / "media").glob("[0-9a-f]*"))
    assert [p.name for p in stored] == [med["sha256"]]
    st, dup = upload(s, tone, name="again.wav")
    assert st == 200 and dup["duplicate"] and dup["id"] == med["id"]
    # raw paths: only under media_dirs, after resolving .. and symlinks
    def raw(path):
        return r("POST", "/api/v1/broadcasts", {"zones": ["xa-b"], "source": {"kind": "file", "path": path}},
                 headers=AUTH)
    st, b = raw(str(media_ok / "ok.wav"))
    assert st == 201, b
    r("DELETE", f"/api/v1/broadcasts/{b['id']}", headers=AUTH)
    for trick in (str(media_ok / ".." / "secret.wav"), str(media_ok / "link.wav"), "/etc/passwd",
                  str(media_ok) + "/../programmes-evil/x.wav"):
        st, err = raw(trick)
        assert st == 403 and err["error"]["code"] == "path_not_allowed", trick
    # media in use cannot be deleted; afterwards it can, file and all
    st, b = r("POST", "/api/v1/broadcasts", {"zones": ["xa-a"], "repeat": 20,
                                             "source": {"kind": "media", "id": med["id"]}}, headers=AUTH)
    assert st == 201
    st, err = r("DELETE", f"/api/v1/media/{med['id']}", headers=AUTH)
    assert st == 409 and err["error"]["code"] == "media_in_use" and err["error"]["broadcasts"] == [b["id"]]
    r("DELETE", f"/api/v1/broadcasts/{b['id']}", headers=AUTH)
    assert r("DELETE", f"/api/v1/media/{med['id']}", headers=AUTH)[0] == 200
    assert list((tmp_path / "data" / "media").glob("[0-9a-f]*")) == []
    st, err = r("POST", "/api/v1/broadcasts", {"zones": ["xa-a"], "source": {"kind": "media", "id": med["id"]}},
                headers=AUTH)
    assert st == 404 and err["error"]["code"] == "unknown_media"
    assert r("GET", "/api/v1/health")[0] == 200
    assert "Traceback" not in s.output()
