"""Settings: safe embedded defaults, then an optional TOML file, then LOA_* environment, then flags."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               TomlConfigSettingsSource)

from control.alerts.config import (DEFAULT_LEVEL_RULES, AlertAuthorityConfig, AlertFeedConfig,
                                   AlertLevelRule)
from streamer.zones import parse_destination, parse_hostport


class ZoneConfig(BaseModel):
    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    name: str = ""
    parent: str | None = None
    multicast: str | None = None
    unicast: list[str] = []
    level: str = ""
    code: str = ""
    language: str = "vi"
    #: administrative unit codes a CAP <geocode> may name to reach this zone (and its subtree)
    codes: list[str] = Field(default_factory=list, max_length=1000)
    #: the TTS voice a broadcast here is read in when it names none (None: the parent zone's,
    #: else the server's `tts_voice`)
    voice: str | None = Field(default=None, min_length=1, max_length=100)
    #: the languages this zone airs, in order: a broadcast's variants in these languages are
    #: aired one after another (empty: the parent zone's, else [language])
    languages: list[str] = Field(default_factory=list, max_length=20)
    #: anybody may listen to this zone (/listen, /nghe, boards) without an account; None: the
    #: `listen_public_zones` setting decides
    public: bool | None = None

    @field_validator("multicast")
    @classmethod
    def _mcast(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import ipaddress
        host, _ = parse_hostport(v, "multicast")
        if not ipaddress.ip_address(host).is_multicast:
            raise ValueError(f"{host} is not a multicast address")
        return v

    @field_validator("unicast")
    @classmethod
    def _ucast(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_destination(item, "unicast destination")
        return v


class ReceiverConfig(BaseModel):
    """A static receiver named in the TOML file (applied at start as an upsert)."""
    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    zone: str = Field(min_length=1, max_length=100)
    name: str = ""
    address: str | None = None  # HOST:PORT it listens on; becomes a unicast destination
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)
    link: Literal["sim", "ethernet", "wifi"] = "ethernet"
    notes: str = ""

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        if v is not None:
            parse_hostport(v, "receiver address")
        return v


class TtsEngineConfig(BaseModel):
    """A speech engine (`[[tts_engines]]`): espeak-ng (offline, always there) or a domestic
    cloud service; its API key is read from the environment variable `api_key_env` names."""
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    kind: Literal["espeak", "fpt", "viettel", "zalo", "vbee"]
    url: str = ""
    api_key_env: str = ""
    voices: list[str] = []
    default_voice: str | None = None
    app_id: str = ""        # Vbee
    callback_url: str = ""  # Vbee (required by its API; results are polled)


class GroupConfig(BaseModel):
    id: str = Field(min_length=1, max_length=100)
    name: str = ""
    zones: list[str] = []


DEMO_ZONE = ZoneConfig(id="demo", name="Demo zone (local reference receiver)",
                       unicast=["127.0.0.1:5006"])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOA_", extra="ignore",
                                      env_nested_delimiter="__")

    http: str = "127.0.0.1:8080"
    data_dir: Path = Path("data")
    log_level: str = "INFO"
    # audio / RTP
    opus_bitrate: int = Field(32_000, ge=6_000, le=510_000)
    opus_complexity: int = Field(5, ge=0, le=10)
    opus_fec: bool = True
    # The loss a program's encoder plans for in zones where no receiver reports (multicast
    # groups, stock or third-party receivers only). In a zone where registered receivers
    # report, the worst of their reports counts instead (receivers there that never report
    # are not counted): 0 on clean links (no FEC overhead, fullband audio), in-band FEC once
    # loss reaches ~5 %. A program takes the worst of its zones; a fall waits 30 s.
    opus_packet_loss_perc: int = Field(10, ge=0, le=100)
    opus_application: Literal["audio", "voip", "lowdelay"] = "audio"
    payload_type: int = Field(111, ge=96, le=127)
    multicast_ttl: int = Field(1, ge=0, le=255)
    multicast_if: str | None = None
    # the UDP port media leaves from; registered receivers send their register/heartbeat/report
    # messages here (media must leave from the port they talk to, or NAT drops it). 0: any
    send_port: int = Field(5004, ge=0, le=65535)
    # sender processes: 1 keeps the kernel send work out of the process that runs the tick and
    # the API (measured: 5000 receivers, emergency p95 45 ms with 1 vs 335 ms with 0); 0 = in-process
    fanout_workers: int = Field(1, ge=0, le=64)
    fanout_batch: int = Field(512, ge=1, le=1024)  # destinations per sendmmsg call
    cellular_ptime_ms: Literal[20, 40, 60] = 40  # packet time for receivers on SIM links
    engine_realtime: bool = True  # SCHED_FIFO (else nice -10) for the tick thread if permitted
    # CPUs reserved for the real-time path (streamer.cpus): the tick thread and the sender
    # processes run there, everything else of `loa serve` (event loop, speech synthesis,
    # decoders) on the other CPUs it may use. [] (default): nothing pinned. E.g. [0] on a
    # 4-core server: synthesis never starves on the tick's core, so the kernel never takes
    # 50 ms from the tick to run it (late ticks, `loa bench tts --engine-cpus 0`).
    engine_cpus: list[int] = []
    # registered receivers (issue: receivers in the field)
    srtp: bool = True  # registered receivers get SRTP; static destinations stay plain RTP
    media_key_rotate_h: float = Field(6.0, gt=0, le=24 * 30)
    receiver_heartbeat_s: float = Field(15.0, ge=1, le=600)
    # live input
    rtp_ingest: list[dict] = []  # [{port, zones, allow, level, codec, payload_type, name, idle_s}]
    webrtc_grace_s: float = Field(3.0, ge=0, le=60)
    webrtc_loopback_only: bool = False  # tests: ICE host candidates on 127.0.0.1 only
    webrtc_ice_servers: list[str] = []  # e.g. ["stun:stun.example.vn:3478"]; none by default
    tls_cert: Path | None = None  # HTTPS (phones only allow the microphone on secure pages)
    tls_key: Path | None = None
    # mixing
    duck_db: float = Field(-15.0, le=0, ge=-60)
    duck_ramp_ms: float = Field(200.0, ge=0, le=5000)
    resume_rewind_s: float = Field(2.0, ge=0, le=60)
    loudness_target_lufs: float = Field(-16.0, ge=-40, le=-5)
    emergency_attention: Literal["chime", "siren", "none"] = "chime"
    # files
    media_dirs: list[Path] = []  # where an admin may point a raw `file` source
    max_body_mb: int = 1  # JSON bodies
    max_upload_mb: int = Field(200, ge=1, le=100_000)  # media uploads (streamed to disk)
    # state and accounts
    db_path: Path | None = None  # default: <data_dir>/loa.db
    # faults (issue 13): a write waits this long for another connection's lock, then 503
    db_busy_timeout_ms: int = Field(1000, ge=50, le=60_000)
    # disk reserved at start for as-run/audit records the database cannot take (a full disk)
    journal_reserve_kb: int = Field(8192, ge=0, le=4_194_304)
    # an emergency/priority broadcast interrupted by a crash resumes if the server is back
    # within this long (0: never resumed)
    resume_within_s: float = Field(1800.0, ge=0, le=30 * 86400)
    admin_token: SecretStr | None = None  # LOA_ADMIN_TOKEN: a bearer token with the admin role
    secret_key: SecretStr | None = None  # base64 32 bytes; default: <data_dir>/secret.key
    session_ttl_h: float = Field(12.0, gt=0, le=24 * 30)
    cookie_secure: bool | None = None  # None: Secure exactly when the request came over TLS
    login_attempts: int = Field(5, ge=1, le=1000)  # failed logins per 5 min per address/user
    # zones (editable through the API later; from this file for now)
    zones: list[ZoneConfig] = []
    # a username's failures from all addresses per 5 min before every attempt on it is slowed
    # (never blocked: a correct password from a client that is not failing still signs in)
    login_user_budget: int = Field(20, ge=1, le=100_000)
    # resource limits (issue 13): no account starves the engine, the API stays reachable.
    # Broadcasts: per principal (an emergency counts too) and per zone (counting the new
    # start's level and above; never refusing an emergency). Refusals are 429 with the reason.
    limit_active_per_principal: int = Field(16, ge=1, le=100_000)
    limit_starts_per_minute_per_principal: int = Field(30, ge=1, le=100_000)
    limit_decoders_per_principal: int = Field(8, ge=1, le=100_000)
    limit_active_per_zone: int = Field(8, ge=1, le=100_000)
    limit_starts_per_minute_per_zone: int = Field(60, ge=1, le=100_000)
    decode_workers: int = Field(0, ge=0, le=64)  # shared file-decoder threads; 0: 2-4 by cores
    # HTTP: a request's headers must arrive within header_timeout_s of the connection (or of
    # the previous answer); a body may pause at most body_timeout_s between bytes
    http_header_timeout_s: float = Field(10.0, gt=0, le=3600)
    http_body_timeout_s: float = Field(30.0, gt=0, le=3600)
    http_max_connections: int = Field(4000, ge=16, le=1_000_000)
    http_max_connections_per_address: int = Field(256, ge=1, le=1_000_000)
    # open files kept free for everything but HTTP connections (database, media, decoders,
    # sockets): the connection cap is lowered to fit the process's open-files limit
    open_files_reserve: int = Field(256, ge=16, le=100_000)
    event_streams_per_principal: int = Field(8, ge=1, le=10_000)
    event_stream_recheck_s: float = Field(5.0, gt=0, le=3600)  # credentials re-checked this often
    # listening, archive, e-boards (issue 18)
    listen_public_zones: list[str] = []   # zones anybody may hear (also set by the API)
    listen_max_per_zone: int = Field(500, ge=1, le=1_000_000)
    listen_max_total: int = Field(2000, ge=1, le=1_000_000)
    listen_max_per_address: int = Field(4, ge=1, le=1_000_000)
    listen_buffer_kb: int = Field(64, ge=4, le=65_536)  # unsent bytes before a slow reader goes
    #: how often pages go out to HTTP listeners: one send(2) per listener each time (the cost
    #: of listening is per send: 2 s costs about half of 1 s, `loa bench listen`); a listener
    #: hears the zone up to this much (+0.2 s) after its loudspeakers, and a new one gets its
    #: first audio within it
    listen_flush_s: float = Field(2.0, ge=0.2, le=5.0)
    archive: bool = True   # every finished broadcast at normal level or above, as Ogg/Opus
    archive_max_age_days: float = Field(90.0, gt=0, le=36_500)
    archive_max_mb: int = Field(2000, ge=1, le=10_000_000)
    groups: list[GroupConfig] = []
    receivers: list[ReceiverConfig] = []
    demo_zone: bool = True  # with no zones configured, serve a local demo zone
    # schedules (issue 16): local times are in this zone (a schedule keeps the zone it was
    # made in); items start this far ahead (decoded, synthesised) and air on their instant
    timezone: str = "Asia/Ho_Chi_Minh"
    schedule_prepare_ahead_s: float = Field(30.0, ge=2, le=600)
    # relays (issue 16, control/playout.py): hosts (names, addresses, CIDR networks) a relay
    # may reach although private or local; what plays during dead air ("tone", "none" or a
    # media id); how much dead air raises the notice; the longest wait between reconnections
    relay_allow_hosts: list[str] = []
    relay_fallback: str = Field("tone", min_length=1, max_length=64,
                                pattern=r"^(tone|none|[0-9a-f]+)$")
    relay_silence_s: float = Field(10.0, ge=1, le=3600)
    relay_reconnect_max_s: float = Field(10.0, ge=0.5, le=600)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as "
                             "Asia/Ho_Chi_Minh)") from None
        return v
    # text to speech (issue 14): espeak-ng is always there; cloud engines from [[tts_engines]]
    tts_engines: list[TtsEngineConfig] = []
    tts_engine: str = "espeak"     # the default engine
    tts_voice: str | None = "vi"   # the default voice (of the default engine)
    tts_deadline_s: float = Field(2.0, gt=0, le=60)  # a cloud engine's answer, per sentence
    tts_max_chars: int = Field(20_000, ge=100, le=1_000_000)
    tts_cache_mb: int = Field(200, ge=0, le=100_000)  # rendered sentences in <data_dir>/tts-cache
    #: synthesis worker processes (plus one for emergencies), started with the server: espeak-ng
    #: output resampled and loudness-measured off the tick's GIL; 0: threads in the server
    tts_processes: int = Field(2, ge=0, le=16)
    # disaster alerts: CAP 1.2 push and pull (control/alerts/)
    alert_authorities: list[AlertAuthorityConfig] = []
    alert_feeds: list[AlertFeedConfig] = []
    alerts_allow_unsigned_push: bool = False  # unsigned push from an alert_authority token airs
    alert_max_kb: int = Field(1024, ge=4, le=16 * 1024)  # one CAP message
    alert_risk_parameter: str = "capDoRuiRo"  # <parameter> carrying the risk level (1-5)
    alert_levels: list[AlertLevelRule] = list(DEFAULT_LEVEL_RULES)  # first row that holds
    alert_repeat_minutes: dict[str, float] = {"emergency": 15.0, "priority": 30.0, "normal": 0.0}
    alert_drill_zones: list[str] = []  # where status Exercise may air (with their subtrees)
    alert_languages: list[str] = ["vi-VN", "vi"]  # which <info> block is aired
    alert_attention: Literal["chime", "siren", "none"] = "siren"
    alert_resource_hosts: list[str] = []  # hosts an audio <resource> may be fetched from
    alert_resource_max_mb: float = Field(20.0, gt=0, le=500)
    # several nodes through Redis (issue 19, control/cluster.py): nothing here is read, and
    # redis is not imported, unless redis_url is set; role "all" without it is one node
    redis_url: str | None = None          # LOA_REDIS_URL, e.g. redis://10.0.0.5:6379/0
    role: Literal["origin", "edge", "all"] = "all"
    redis_prefix: str = Field("loa:", min_length=1, max_length=40)
    cluster_key: SecretStr | None = None  # LOA_CLUSTER_KEY: shared by the nodes (>= 32 chars)
    cluster_key_file: Path | None = None  # or read from this file
    node_id: str | None = Field(None, min_length=1, max_length=100,
                                pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # default: host-port
    node_address: str = "127.0.0.1"       # the address other nodes and receivers reach us at
    feed_port: int = Field(0, ge=0, le=65535)  # UDP: origin→edge media and subscriptions
    #: an edge's LAN: the zones (ids; "*": all) whose static destinations (multicast group,
    #: fixed-address receivers) this edge sends instead of the origin (zone.set commands)
    serve_zones: list[str] = []

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _TOML_FILE.get(cls)
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @property
    def database_path(self) -> Path:
        return self.db_path or (self.data_dir / "loa.db")

    def effective_zones(self) -> list[ZoneConfig]:
        if not self.zones and self.demo_zone:
            return [DEMO_ZONE]
        return list(self.zones)


_TOML_FILE: dict[type, str] = {}


class ConfigError(ValueError):
    pass


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults < TOML file < LOA_* environment < explicit overrides (command-line flags)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        import tomllib
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    cls: type[Settings] = Settings
    if config is not None:
        cls = type("FileSettings", (Settings,), {})  # type: ignore[assignment]
        _TOML_FILE[cls] = str(config)
    try:
        return cls(**overrides)
    except Exception as e:  # pydantic ValidationError: make it one readable message
        raise ConfigError(f"invalid settings: {e}") from None
