"""Who may do what: credentials, roles, and the one policy table every request goes through.

Sans-IO: nothing here touches the network or the database; control/app.py's auth middleware
looks up principals and calls `Policy`. Every route is registered with an *action* name, and
`POLICY` says which roles may perform each action. Zone scope and level caps for broadcasts are
checked by `Policy.check_broadcast` / `Policy.may_stop` from the same table of role limits.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from streamer.mixer.arbitration import Level

ROLES = ("admin", "operator", "official", "alert_authority", "viewer")
ALL = frozenset(ROLES)
ADMIN = frozenset({"admin"})
PUBLIC = "public"  # no credentials needed

# action -> roles that may perform it (scope and level limits on top, see ROLE_LIMITS)
POLICY: dict[str, frozenset[str] | str] = {
    "health.read": PUBLIC, "openapi.read": PUBLIC, "metrics.read": PUBLIC, "sdp.read": PUBLIC,
    "session.login": PUBLIC,
    "session.logout": ALL, "session.me": ALL,
    "zones.read": ALL, "zones.write": ADMIN,
    "receivers.read": frozenset({"admin", "operator", "viewer"}), "receivers.write": ADMIN,
    "media.read": ALL, "media.write": frozenset({"admin", "operator"}),
    "broadcasts.read": ALL,
    "broadcasts.start": frozenset({"admin", "operator", "official", "alert_authority"}),
    "broadcasts.stop": frozenset({"admin", "operator", "official", "alert_authority"}),
    "asrun.read": ALL, "events.read": ALL,
    "users.read": ADMIN, "users.write": ADMIN,
    "audit.read": ADMIN,
    # going live (control/live.py asks through LoaApp.authorize)
    "live.start": frozenset({"admin", "operator", "official", "alert_authority"}),
    "live.stop": frozenset({"admin", "operator", "official", "alert_authority"}),
    "live.status": ALL,
}


@dataclass(frozen=True)
class RoleLimits:
    max_level: Level | None  # highest level this role may start
    min_level: Level = Level.BACKGROUND
    anywhere: bool = False  # False: only inside the user's zone scope
    stop_any_in_scope: bool = False  # False: only broadcasts it owns
    raw_paths: bool = False


ROLE_LIMITS: dict[str, RoleLimits] = {
    "admin": RoleLimits(Level.EMERGENCY, anywhere=True, stop_any_in_scope=True, raw_paths=True),
    "operator": RoleLimits(Level.PRIORITY, stop_any_in_scope=True),
    "official": RoleLimits(Level.PRIORITY),
    "alert_authority": RoleLimits(Level.EMERGENCY, min_level=Level.EMERGENCY, anywhere=True),
    "viewer": RoleLimits(None),
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    user_id: int | None = None
    scope: tuple[str, ...] = ()  # zone ids whose subtrees this user may address
    via: str = "token"  # token | session | admin-token | bootstrap
    display_name: str = ""

    @property
    def label(self) -> str:
        """What other people see (a refusal names the holder by it)."""
        return self.display_name or self.name

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "user_id": self.user_id,
                "scope": list(self.scope), "via": self.via, "display_name": self.label}


class Denied(Exception):
    def __init__(self, message: str, code: str = "forbidden") -> None:
        super().__init__(message)
        self.code = code


class Policy:
    @staticmethod
    def allows(principal: Principal | None, action: str) -> bool:
        roles = POLICY[action]  # KeyError: a route registered without an action is a bug
        if roles == PUBLIC:
            return True
        return principal is not None and principal.role in roles

    @staticmethod
    def scope_zones(principal: Principal, tree) -> set[str] | None:
        """Zones the principal may address; None means everywhere."""
        if ROLE_LIMITS[principal.role].anywhere:
            return None
        out: set[str] = set()
        for z in principal.scope:
            if z in tree.zones:
                out |= tree.subtree(z)
        return out

    @classmethod
    def check_broadcast(cls, principal: Principal, tree, reached: set[str], level: Level,
                        source_kind: str) -> None:
        lim = ROLE_LIMITS[principal.role]
        if lim.max_level is None or level > lim.max_level:
            raise Denied(f"role {principal.role} may not start {level.label} broadcasts"
                         + (f" (highest: {lim.max_level.label})" if lim.max_level is not None else ""))
        if level < lim.min_level:
            raise Denied(f"role {principal.role} starts only {lim.min_level.label} broadcasts")
        if source_kind == "file" and not lim.raw_paths:
            raise Denied("only admin may play a server-side file path; upload it to the media "
                         "library and play it by id", code="raw_path_forbidden")
        allowed = cls.scope_zones(principal, tree)
        if allowed is not None:
            outside = sorted(reached - allowed)
            if outside:
                raise Denied(f"zones outside your scope: {', '.join(outside[:10])}",
                             code="out_of_scope")

    @classmethod
    def may_stop(cls, principal: Principal, tree, broadcast: dict) -> bool:
        lim = ROLE_LIMITS[principal.role]
        if principal.role == "admin":
            return True
        if broadcast.get("owner") == principal.name:
            return True
        if not lim.stop_any_in_scope:
            return False
        allowed = cls.scope_zones(principal, tree)
        reached = set(broadcast.get("reached_zones", []))
        level = Level.parse(broadcast.get("level", "normal"))
        return (allowed is None or reached <= allowed) and level <= (lim.max_level or -1)


# ----------------------------------------------------------------------------- secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


def hash_password(password: str) -> str:
    """scrypt (memory-hard: 16 MiB per guess), self-describing so parameters can grow later."""
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                        maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(dk)}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        # same work as a real check so a missing user is not told apart by timing
        hash_password(password)
        return False
    try:
        scheme, n, r, p, salt, dk = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=len(_unb64(dk)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(dk))


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def token_hash(secret: str) -> str:
    """Tokens carry 256 random bits, so one SHA-256 is enough (no KDF needed against guessing)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str, str]:
    """(token id, full token to hand out once, hash to store). Format: loa_<id>_<secret>."""
    tid = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return tid, f"loa_{tid}_{secret}", token_hash(secret)


def parse_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "loa" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def constant_eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_loopback_host(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- login throttle

@dataclass
class LoginThrottle:
    """At most `limit` failed logins per `window_s` per client address and per username."""
    limit: int = 5
    window_s: float = 300.0
    _fails: dict[str, deque] = field(default_factory=dict)

    def retry_after(self, keys: list[str], now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        wait = 0.0
        for k in keys:
            q = self._fails.get(k)
            if not q:
                continue
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                wait = max(wait, q[0] + self.window_s - now)
        return wait

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for k in keys:
            self._fails.setdefault(k, deque()).append(now)
        if len(self._fails) > 10_000:  # bounded memory under a spray of names
            for k in list(self._fails)[:5000]:
                del self._fails[k]

    def succeeded(self, keys: list[str]) -> None:
        for k in keys:
            self._fails.pop(k, None)


# ----------------------------------------------------------------------------- receiver secrets

class SecretBox:
    """Receiver secrets at rest: AES-256-GCM under a key kept beside the database.

    The receiver-security work verifies HMACs made with the secret, which needs the secret
    itself (a hash cannot verify an HMAC), so it is stored encrypted, with the receiver id as
    associated data so a ciphertext cannot be moved to another receiver. The key comes from
    LOA_SECRET_KEY (base64, 32 bytes) or a 0600 file created on first start.
    """

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        if len(key) != 32:
            raise ValueError("the secret key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def load(cls, key_b64: str | None, key_file: Path) -> "SecretBox":
        if key_b64:
            return cls(_unb64(key_b64.strip()))
        if key_file.exists():
            return cls(key_file.read_bytes())
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key = os.urandom(32)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return cls(key)

    def seal(self, secret: bytes, context: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, secret, context.encode())

    def open(self, blob: bytes, context: str) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], context.encode())
