// Loa dashboard: the monitoring room's view of the receivers in the field.
// Everything comes from the API with the viewer's session (or local bootstrap on loopback):
// GET /receivers (with the live state from the receiver protocol), /zones, /broadcasts,
// /broadcasts/{id}/delivery, and the Server-Sent Events at /events for offline alarms.
// window.loaDash mirrors what the page shows (tests and the curious can read it).
(function () {
  "use strict";
  const API = "/api/v1";
  const REFRESH_MS = 5000;
  const ZONES_EVERY = 12;          // refreshes between zone reloads (one minute)
  const T = {
    vi: {
      title: "Giám sát loa", logout: "Đăng xuất", login: "Đăng nhập", username: "Tên đăng nhập",
      password: "Mật khẩu", login_btn: "Đăng nhập", bad_login: "Sai tên đăng nhập hoặc mật khẩu.",
      throttled: "Thử quá nhiều lần, vui lòng đợi.", login_failed: "Không đăng nhập được: ",
      session_expired: "Phiên đăng nhập đã hết hạn, vui lòng đăng nhập lại.",
      forbidden: "Tài khoản này không có quyền xem danh sách loa.",
      server_down: "Không liên lạc được với máy chủ; đang thử lại…",
      conn_on: "Trực tiếp", conn_off: "Mất kết nối",
      alarm_title: "Cảnh báo mất kết nối", ack: "Xác nhận", ack_all: "Xác nhận tất cả",
      still_offline: "Vẫn mất kết nối", back_online: "Đã kết nối lại {t}",
      before_open: "mất kết nối từ trước khi mở trang", times: "{n} lần",
      last_seen: "lần cuối {t}",
      online: "Trực tuyến", offline: "Mất kết nối", never: "Chưa kết nối", total: "Tổng số loa",
      on_air_now: "Đang phát", receivers: "Loa theo khu vực", updated: "Cập nhật {t}",
      f_zone: "Khu vực", f_state: "Trạng thái", f_quality: "Chất lượng", f_search: "Tìm mã / tên",
      search_ph: "vd. chợ, rx-01", clear: "Xoá lọc", all: "Tất cả", all_zones: "Tất cả khu vực",
      q_good: "Tốt", q_fair: "Trung bình", q_poor: "Kém", q_none: "Chưa có số liệu",
      c_state: "Trạng thái", c_receiver: "Loa", c_seen: "Lần cuối", c_address: "Địa chỉ",
      c_link: "Đường truyền", c_playing: "Đang phát", c_zone: "Khu vực", c_outcome: "Kết quả",
      c_first: "Đến tiếng đầu", c_audio: "Đã phát",
      no_match: "Không có loa nào khớp bộ lọc.", zone_count: "{on}/{n} trực tuyến",
      subtree: "cả vùng {on}/{n}",
      loss: "mất {v}%", jitter: "jitter {v} ms", rtt: "RTT {v} ms",
      broadcasts: "Buổi phát đang diễn ra", no_broadcasts: "Không có buổi phát nào.",
      recent: "Vừa kết thúc", delivery: "Báo cáo phát", close: "Đóng", report: "Báo cáo phát",
      dl_none: "Không có loa đăng ký nào trong các khu vực này.", dl_missing: "Không tìm thấy buổi phát.",
      full: "Đầy đủ", partly: "Một phần", never_played: "Không phát",
      started: "bắt đầu {t}", ended: "kết thúc {t}", by: "bởi {who}",
      queued_behind: "Đang chờ ở {zones}: {holder} ({who}) đang giữ",
      emergency: "Khẩn cấp", priority: "Ưu tiên", normal: "Thông thường", background: "Nền",
      st_queued: "Đang chờ", st_playing: "Đang phát", st_finished: "Đã xong", st_stopped: "Đã dừng",
      st_preempted: "Bị ngắt", st_ducked: "Bị giảm âm", st_interrupted: "Bị gián đoạn",
      st_refused: "Bị từ chối", st_failed: "Lỗi",
      k_tone: "Âm thử", k_file: "Tệp", k_media: "Thư viện", k_live: "Trực tiếp", k_chime: "Chuông",
      k_siren: "Còi", k_rtp: "RTP",
      just_now: "vừa xong", s_ago: "{n} giây trước", m_ago: "{n} phút trước", h_ago: "{n} giờ trước",
      d_ago: "{n} ngày trước",
      rejected: "Máy chủ từ chối bản tin của loa {rx} từ {addr}: {why}",
      r_bad_mac: "sai chữ ký (khoá bí mật không khớp)", r_unknown_id: "mã loa chưa đăng ký",
    },
    en: {
      title: "Receiver monitoring", logout: "Log out", login: "Log in", username: "Username",
      password: "Password", login_btn: "Log in", bad_login: "Wrong username or password.",
      throttled: "Too many attempts, please wait.", login_failed: "Could not log in: ",
      session_expired: "Your session has ended; please log in again.",
      forbidden: "This account may not view the receivers.",
      server_down: "Cannot reach the server; retrying…",
      conn_on: "Live", conn_off: "Disconnected",
      alarm_title: "Receivers offline", ack: "Acknowledge", ack_all: "Acknowledge all",
      still_offline: "Still offline", back_online: "Back online {t}",
      before_open: "was offline before this page opened", times: "{n} times",
      last_seen: "last seen {t}",
      online: "Online", offline: "Offline", never: "Never seen", total: "Receivers",
      on_air_now: "On air", receivers: "Receivers by zone", updated: "Updated {t}",
      f_zone: "Zone", f_state: "State", f_quality: "Link quality", f_search: "Search id / name",
      search_ph: "e.g. market, rx-01", clear: "Clear filters", all: "All", all_zones: "All zones",
      q_good: "Good", q_fair: "Fair", q_poor: "Poor", q_none: "No data",
      c_state: "State", c_receiver: "Receiver", c_seen: "Last seen", c_address: "Address",
      c_link: "Link", c_playing: "Playing", c_zone: "Zone", c_outcome: "Outcome",
      c_first: "To first audio", c_audio: "Played",
      no_match: "No receiver matches the filters.", zone_count: "{on}/{n} online",
      subtree: "whole area {on}/{n}",
      loss: "loss {v}%", jitter: "jitter {v} ms", rtt: "RTT {v} ms",
      broadcasts: "Active broadcasts", no_broadcasts: "Nothing on air.",
      recent: "Recently ended", delivery: "Delivery report", close: "Close", report: "Delivery report",
      dl_none: "No registered receivers in these zones.", dl_missing: "No such broadcast.",
      full: "Full", partly: "Partly", never_played: "Never",
      started: "started {t}", ended: "ended {t}", by: "by {who}",
      queued_behind: "Waiting in {zones}: held by {holder} ({who})",
      emergency: "Emergency", priority: "Priority", normal: "Normal", background: "Background",
      st_queued: "Queued", st_playing: "Playing", st_finished: "Finished", st_stopped: "Stopped",
      st_preempted: "Preempted", st_ducked: "Ducked", st_interrupted: "Interrupted",
      st_refused: "Refused", st_failed: "Failed",
      k_tone: "Test tone", k_file: "File", k_media: "Library", k_live: "Live", k_chime: "Chime",
      k_siren: "Siren", k_rtp: "RTP",
      just_now: "just now", s_ago: "{n} s ago", m_ago: "{n} min ago", h_ago: "{n} h ago",
      d_ago: "{n} d ago",
      rejected: "The server rejected messages from receiver {rx} at {addr}: {why}",
      r_bad_mac: "bad signature (secret does not match)", r_unknown_id: "unknown receiver id",
    },
  };
  const ACTIVE = new Set(["queued", "playing", "preempted", "ducked"]);
  const $ = (id) => document.getElementById(id);
  const qs = new URLSearchParams(location.search);
  let lang = qs.get("lang") || localStorage.getItem("loa.lang") || "vi";
  if (!T[lang]) lang = "vi";

  const S = (window.loaDash = {
    ready: false, user: null, lang, connected: false, refreshes: 0, lastRefresh: null,
    zones: [], receivers: [], broadcasts: [], past: [], alarms: [], delivery: null, error: null,
    events: 0,
    queued: {},  // broadcast id -> its latest broadcast.queued event (who holds its zones)
  });
  let zonesById = {}, treeOrder = [], childrenOf = {};
  let refreshTimer = null, refreshing = false, soonTimer = null, es = null, lastSeq = 0;
  let firstLoad = true, wantPast = true;
  const flashRows = new Set();

  const t = (k, vars) => {
    let s = (T[lang] && T[lang][k]) || T.vi[k] || k;
    for (const [a, b] of Object.entries(vars || {})) s = s.replace("{" + a + "}", b);
    return s;
  };
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  };
  const pill = (cls, text) => el("span", "pill " + cls, text);
  const fold = (s) => String(s || "").normalize("NFD").replace(/[\u0300-\u036f]/g, "")
    .replace(/[đĐ]/g, "d").toLowerCase();
  const zoneName = (id) => (zonesById[id] && zonesById[id].name) || id;
  const hhmmss = (iso) => {
    const d = new Date(iso);
    return isNaN(d) ? "—" : d.toLocaleTimeString(lang === "vi" ? "vi-VN" : "en-GB", { hour12: false });
  };
  function ago(iso) {
    const ms = Date.now() - new Date(iso).getTime();
    if (!isFinite(ms)) return "—";
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 5) return t("just_now");
    if (s < 60) return t("s_ago", { n: s });
    if (s < 3600) return t("m_ago", { n: Math.floor(s / 60) });
    if (s < 86400) return t("h_ago", { n: Math.floor(s / 3600) });
    return t("d_ago", { n: Math.floor(s / 86400) });
  }
  const relSpan = (iso) => {
    const sp = el("span", "rel", iso ? ago(iso) : "—");
    if (iso) { sp.dataset.ts = iso; sp.title = new Date(iso).toLocaleString(); }
    return sp;
  };
  const fmt = (v, digits) => (v === null || v === undefined || !isFinite(v)) ? null
    : Number(v).toFixed(digits);

  async function api(method, path, body) {
    const opt = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) { opt.headers["Content-Type"] = "application/json"; opt.body = JSON.stringify(body); }
    const r = await fetch(API + path, opt);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    return { status: r.status, data };
  }
  function notice(kind, text) {
    const n = $("notice");
    S.error = text || null;
    if (!text) { n.classList.add("hidden"); return; }
    n.className = "notice " + kind; n.textContent = text;
  }

  // ------------------------------------------------------------------ language
  function applyLang() {
    S.lang = lang;
    document.documentElement.lang = lang;
    $("lang").textContent = lang === "vi" ? "EN" : "VI";
    document.querySelectorAll("[data-i18n]").forEach((e) => { e.textContent = t(e.dataset.i18n); });
    document.querySelectorAll("[data-i18n-ph]").forEach((e) => { e.placeholder = t(e.dataset.i18nPh); });
    setConn(S.connected);
    renderAll();
  }
  $("lang").addEventListener("click", () => {
    lang = lang === "vi" ? "en" : "vi"; localStorage.setItem("loa.lang", lang); applyLang();
  });

  // ------------------------------------------------------------------ session
  async function loadMe() {
    let r;
    try { r = await api("GET", "/session"); } catch (e) { r = { status: 0 }; }
    if (r.status === 200 && r.data) {
      const u = r.data.user || r.data;
      S.user = { name: u.name || u.username, role: u.role };
      return showDash();
    }
    if (r.status === 0) {
      notice("error", t("server_down"));
      setTimeout(loadMe, REFRESH_MS);
      return;
    }
    showLogin();
  }
  function showLogin(msg) {
    S.user = null; S.ready = false;
    stopAll();
    $("dash").classList.add("hidden"); $("logout").classList.add("hidden");
    $("login").classList.remove("hidden"); $("who").textContent = "";
    if (msg) notice("warn", msg); else notice(null, null);
  }
  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const e = $("login-error"); e.classList.add("hidden");
    let r;
    try {
      r = await api("POST", "/session", { username: $("username").value, password: $("password").value });
    } catch (x) { r = { status: 0, data: null }; }
    if (r.status >= 200 && r.status < 300) { $("password").value = ""; notice(null, null); return loadMe(); }
    e.textContent = r.status === 401 ? t("bad_login") : r.status === 429 ? t("throttled")
      : t("login_failed") + ((r.data && r.data.error && r.data.error.message) || r.status);
    e.classList.remove("hidden");
  });
  $("logout").addEventListener("click", async () => {
    try { await api("DELETE", "/session"); } catch (e) { /* offline */ }
    loadMe();
  });
  function stopAll() {
    if (refreshTimer) { clearInterval(refreshTimer); refreshTimer = null; }
    if (es) { es.close(); es = null; }
    setConn(false);
  }
  async function showDash() {
    $("login").classList.add("hidden"); $("dash").classList.remove("hidden");
    $("logout").classList.toggle("hidden", S.user.name === "local-bootstrap");
    $("who").textContent = S.user.name + (S.user.role ? " · " + S.user.role : "");
    notice(null, null);
    await loadZones();
    await refresh();
    openEvents();
    if (!refreshTimer) refreshTimer = setInterval(refresh, REFRESH_MS);
  }

  // ------------------------------------------------------------------ data
  async function loadZones() {
    const r = await api("GET", "/zones");
    if (r.status === 401) return showLogin(t("session_expired"));
    if (r.status !== 200 || !r.data) return;
    S.zones = r.data.zones || [];
    zonesById = {}; childrenOf = {};
    S.zones.forEach((z) => { zonesById[z.id] = z; });
    const roots = [];
    S.zones.forEach((z) => {
      if (z.parent && zonesById[z.parent]) (childrenOf[z.parent] = childrenOf[z.parent] || []).push(z.id);
      else roots.push(z.id);
    });
    treeOrder = [];
    const walk = (id, depth, seen) => {
      if (seen.has(id)) return;
      seen.add(id);
      treeOrder.push({ id, depth });
      (childrenOf[id] || []).forEach((c) => walk(c, depth + 1, seen));
    };
    const seen = new Set();
    roots.forEach((id) => walk(id, 0, seen));
  }
  function subtree(id) {
    const out = new Set();
    const stack = [id];
    while (stack.length) {
      const z = stack.pop();
      if (out.has(z)) continue;
      out.add(z);
      (childrenOf[z] || []).forEach((c) => stack.push(c));
    }
    return out;
  }

  async function refresh() {
    if (refreshing || !S.user) return;
    refreshing = true;
    try {
      if (S.refreshes > 0 && S.refreshes % ZONES_EVERY === 0) await loadZones();
      // the recently ended list reads the database: every third refresh, or after an event
      const withPast = wantPast || S.refreshes % 3 === 0;
      wantPast = false;
      const [rx, bc, past] = await Promise.all([
        api("GET", "/receivers?status=provisioned"), api("GET", "/broadcasts"),
        withPast ? api("GET", "/broadcasts?past=1") : Promise.resolve({ status: 0 })]);
      if (rx.status === 401) return showLogin(t("session_expired"));
      if (rx.status === 403) notice("warn", t("forbidden"));
      else if (rx.status === 200) {
        S.receivers = (rx.data && rx.data.receivers) || [];
        if (S.error) notice(null, null);
      }
      if (bc.status === 200) S.broadcasts = (bc.data && bc.data.broadcasts) || [];
      if (past.status === 200) {
        S.past = ((past.data && past.data.broadcasts) || []).filter((b) => !ACTIVE.has(b.state))
          .sort((a, b) => (b.ended_at || b.created_at || "").localeCompare(a.ended_at || a.created_at || ""))
          .slice(0, 5);
      }
      if (firstLoad && rx.status === 200) {
        firstLoad = false;
        // a receiver already offline when the page opens is an alarm too
        S.receivers.filter((r) => r.live && r.live.state === "offline").forEach((r) =>
          raiseAlarm({ receiver: r.id, zone: r.zone, time: r.live.last_seen, reason: "before_open",
            last_seen: r.live.last_seen }, false));
      }
      if (S.delivery && S.delivery.id) await loadDelivery(S.delivery.id);
      S.refreshes += 1;
      S.lastRefresh = new Date().toISOString();
      S.ready = true;
      renderAll();
    } catch (e) {
      notice("error", t("server_down"));
      setConn(false);
    } finally {
      refreshing = false;
    }
  }
  function refreshSoon(ms) {
    if (soonTimer) return;
    soonTimer = setTimeout(() => { soonTimer = null; refresh(); }, ms || 300);
  }

  // ------------------------------------------------------------------ events and alarms
  function setConn(on) {
    S.connected = !!on;
    const c = $("conn");
    c.className = "conn " + (on ? "on" : "off");
    c.dataset.state = on ? "on" : "off";
    $("conn-text").textContent = t(on ? "conn_on" : "conn_off");
  }
  function openEvents() {
    if (es) es.close();
    es = new EventSource(API + "/events" + (lastSeq ? "?since=" + lastSeq : ""));
    es.onopen = () => setConn(true);
    es.onerror = () => {
      setConn(false);
      if (es && es.readyState === EventSource.CLOSED) {
        es = null;
        setTimeout(() => { if (S.user && !es) { openEvents(); refreshSoon(); } }, REFRESH_MS);
      }
    };
    const types = ["receiver.online", "receiver.offline", "receiver.address_changed",
      "receiver.rejected", "broadcast.created", "broadcast.started", "broadcast.finished",
      "broadcast.stopped", "broadcast.preempted", "broadcast.resumed", "broadcast.ducked",
      "broadcast.interrupted", "broadcast.refused", "broadcast.queued"];
    types.forEach((ty) => es.addEventListener(ty, (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (ev.seq && ev.seq <= lastSeq) return;       // a replay we have already seen
      if (ev.seq) lastSeq = ev.seq;
      S.events += 1;
      onEvent(ev);
    }));
  }
  function findRx(id) { return S.receivers.find((r) => r.id === id); }
  function onEvent(ev) {
    const ty = ev.type;
    if (ty === "receiver.offline") {
      const r = findRx(ev.receiver);
      if (r) { r.live = Object.assign({}, r.live || {}, { state: "offline", online: false }); }
      flashRows.add(ev.receiver);
      raiseAlarm(ev, true);
      renderTiles(); renderReceivers();
      refreshSoon();
    } else if (ty === "receiver.online" || ty === "receiver.address_changed") {
      const r = findRx(ev.receiver);
      if (r) {
        r.live = Object.assign({}, r.live || {}, { state: "online", online: true, address: ev.address,
          last_seen: ev.time });
      }
      if (ty === "receiver.online") {
        const a = S.alarms.find((x) => x.receiver === ev.receiver && !x.recovered_at);
        if (a) a.recovered_at = ev.time || new Date().toISOString();
        renderAlarms();
      }
      renderTiles(); renderReceivers();
      refreshSoon();
    } else if (ty === "receiver.rejected") {
      const why = t("r_" + ev.reason) !== "r_" + ev.reason ? t("r_" + ev.reason) : ev.reason;
      notice("warn", t("rejected", { rx: ev.receiver || "?", addr: ev.address || "?", why }));
    } else if (ty.startsWith("broadcast.")) {
      if (ty === "broadcast.queued") S.queued[ev.broadcast] = ev;
      wantPast = true;
      refreshSoon();
    }
  }
  function raiseAlarm(ev, fresh) {
    let a = S.alarms.find((x) => x.receiver === ev.receiver);
    const time = ev.time || new Date().toISOString();
    if (a) {
      if (fresh) a.count += 1;
      Object.assign(a, { time, reason: ev.reason, last_seen: ev.last_seen || a.last_seen,
        zone: ev.zone || a.zone, recovered_at: null, acked: false });
      S.alarms.splice(S.alarms.indexOf(a), 1);
    } else {
      a = { receiver: ev.receiver, zone: ev.zone, time, reason: ev.reason, last_seen: ev.last_seen,
        recovered_at: null, acked: false, count: 1 };
    }
    S.alarms.unshift(a);
    renderAlarms(fresh);
  }
  function renderAlarms(fresh) {
    const open = S.alarms.filter((a) => !a.acked);
    const box = $("alarms");
    box.classList.toggle("hidden", open.length === 0);
    $("alarm-count").textContent = String(open.filter((a) => !a.recovered_at).length);
    if (fresh) { box.classList.remove("fresh"); void box.offsetWidth; box.classList.add("fresh"); }
    const ul = $("alarm-list"); ul.textContent = "";
    for (const a of open) {
      const li = el("li", a.recovered_at ? "recovered" : "active");
      li.dataset.receiver = a.receiver;
      li.appendChild(el("span", "a-time", hhmmss(a.time)));
      const what = el("span", "a-what");
      const r = findRx(a.receiver);
      what.appendChild(el("b", null, (r && r.name) || a.receiver));
      what.appendChild(document.createTextNode(" · " + zoneName(a.zone)));
      const reason = a.reason === "before_open" ? t("before_open") : (a.reason || "");
      const sub = [a.receiver, reason];
      if (a.last_seen) sub.push(t("last_seen", { t: hhmmss(a.last_seen) }));
      if (a.count > 1) sub.push(t("times", { n: a.count }));
      what.appendChild(el("span", "a-sub", sub.filter(Boolean).join(" · ")));
      li.appendChild(what);
      li.appendChild(el("span", "a-now", a.recovered_at ? t("back_online", { t: hhmmss(a.recovered_at) })
        : t("still_offline")));
      const b = el("button", "ack", t("ack")); b.type = "button";
      b.addEventListener("click", () => { a.acked = true; renderAlarms(); });
      li.appendChild(b);
      ul.appendChild(li);
    }
    const n = open.filter((a) => !a.recovered_at).length;
    document.title = (n ? "(" + n + ") ⚠ " : "") + "Loa — " + t("title");
  }
  $("alarm-ack-all").addEventListener("click", () => { S.alarms.forEach((a) => (a.acked = true)); renderAlarms(); });

  // ------------------------------------------------------------------ filters
  const F = { zone: qs.get("zone") || "", state: qs.get("state") || "", quality: qs.get("quality") || "",
    q: qs.get("q") || "" };
  $("f-state").value = F.state; $("f-quality").value = F.quality; $("f-q").value = F.q;
  function syncUrl() {
    const p = new URLSearchParams(location.search);
    for (const k of ["zone", "state", "quality", "q"]) { if (F[k]) p.set(k, F[k]); else p.delete(k); }
    const s = p.toString();
    history.replaceState(null, "", location.pathname + (s ? "?" + s : "") + location.hash);
  }
  $("f-zone").addEventListener("change", (e) => { F.zone = e.target.value; syncUrl(); renderReceivers(); });
  $("f-state").addEventListener("change", (e) => { F.state = e.target.value; syncUrl(); renderReceivers(); });
  $("f-quality").addEventListener("change", (e) => { F.quality = e.target.value; syncUrl(); renderReceivers(); });
  $("f-q").addEventListener("input", (e) => { F.q = e.target.value; syncUrl(); renderReceivers(); });
  $("f-clear").addEventListener("click", () => {
    F.zone = F.state = F.quality = F.q = "";
    $("f-state").value = ""; $("f-quality").value = ""; $("f-q").value = "";
    syncUrl(); renderReceivers();
  });
  const stateOf = (r) => (r.live && r.live.state) || "never";
  const qualityOf = (r) => (r.live && r.live.link && r.live.link.quality) || "none";
  function matches(r, zoneSet) {
    if (zoneSet && !zoneSet.has(r.zone)) return false;
    if (F.state && stateOf(r) !== F.state) return false;
    if (F.quality && qualityOf(r) !== F.quality) return false;
    if (F.q) {
      const q = fold(F.q.trim());
      if (q && !fold(r.id).includes(q) && !fold(r.name).includes(q)) return false;
    }
    return true;
  }

  // ------------------------------------------------------------------ rendering
  function renderAll() {
    if (!S.user) return;
    renderTiles(); renderZoneSelect(); renderReceivers(); renderAlarms(); renderBroadcasts();
    renderDelivery();
    $("updated").textContent = S.lastRefresh ? t("updated", { t: hhmmss(S.lastRefresh) }) : "";
  }
  function counts(list) {
    const c = { online: 0, offline: 0, never: 0, total: list.length };
    list.forEach((r) => { c[stateOf(r)] = (c[stateOf(r)] || 0) + 1; });
    return c;
  }
  function renderTiles() {
    const c = counts(S.receivers);
    $("n-online").textContent = c.online; $("n-offline").textContent = c.offline;
    $("n-never").textContent = c.never; $("n-total").textContent = c.total;
    $("n-air").textContent = S.broadcasts.length;
  }
  function byZone() {
    const m = {};
    S.receivers.forEach((r) => { (m[r.zone] = m[r.zone] || []).push(r); });
    return m;
  }
  function subtreeCounts(m) {
    // online/total of each zone's whole subtree, bottom-up over the tree order
    const out = {};
    for (let i = treeOrder.length - 1; i >= 0; i--) {
      const id = treeOrder[i].id;
      const own = counts(m[id] || []);
      const c = { on: own.online, n: own.total };
      (childrenOf[id] || []).forEach((k) => { if (out[k]) { c.on += out[k].on; c.n += out[k].n; } });
      out[id] = c;
    }
    return out;
  }
  function renderZoneSelect() {
    const sel = $("f-zone");
    const sub = subtreeCounts(byZone());
    sel.textContent = "";
    const all = el("option", null, t("all_zones")); all.value = ""; sel.appendChild(all);
    for (const { id, depth } of treeOrder) {
      const c = sub[id] || { on: 0, n: 0 };
      const o = el("option", null, "\u2003".repeat(depth) + zoneName(id) + (c.n ? "  (" + c.on + "/" + c.n + ")" : ""));
      o.value = id; sel.appendChild(o);
    }
    if (F.zone && !zonesById[F.zone]) { F.zone = ""; }
    sel.value = F.zone;
  }
  function renderReceivers() {
    const body = $("rx-body");
    body.textContent = "";
    const m = byZone();
    const sub = subtreeCounts(m);
    const zoneSet = F.zone ? subtree(F.zone) : null;
    const shown = {};
    let total = 0;
    const order = treeOrder.slice();
    Object.keys(m).forEach((z) => { if (!zonesById[z]) order.push({ id: z, depth: 0 }); });
    for (const { id } of order) {
      const list = (m[id] || []).filter((r) => matches(r, zoneSet));
      list.sort((a, b) => (a.name || a.id).localeCompare(b.name || b.id, "vi"));
      shown[id] = list;
      total += list.length;
    }
    // a zone is listed when something in its subtree is; ancestors give the tree its shape
    const visible = {};
    for (let i = order.length - 1; i >= 0; i--) {
      const id = order[i].id;
      visible[id] = shown[id].length > 0 || (childrenOf[id] || []).some((k) => visible[k]);
    }
    for (const { id, depth } of order) {
      if (!visible[id]) continue;
      const own = counts(m[id] || []);
      const zr = el("tr", "zone-row"); zr.dataset.zone = id;
      const td = el("td"); td.colSpan = 6; td.style.paddingLeft = (0.5 + depth * 1.4) + "rem";
      td.appendChild(el("span", "z-name", zoneName(id)));
      td.appendChild(el("span", "z-id", id));
      const cnt = el("span", "z-count");
      if (own.total) {
        const b = el("b", own.online === own.total ? "all-ok" : "some-bad",
          t("zone_count", { on: own.online, n: own.total }));
        cnt.appendChild(b);
      }
      const s = sub[id];
      if (s && s.n > own.total) cnt.appendChild(el("span", "z-sub", t("subtree", { on: s.on, n: s.n })));
      td.appendChild(cnt);
      zr.appendChild(td); body.appendChild(zr);
      for (const r of shown[id]) body.appendChild(rxRow(r));
    }
    $("rx-empty").classList.toggle("hidden", total > 0);
    flashRows.clear();
  }
  function rxRow(r) {
    const st = stateOf(r);
    const lv = r.live || {};
    const tr = el("tr", "rx-row " + st + (flashRows.has(r.id) ? " flash" : ""));
    tr.dataset.receiver = r.id; tr.dataset.state = st;
    let td = el("td"); td.appendChild(pill("st-" + st, t(st))); tr.appendChild(td);
    td = el("td");
    td.appendChild(el("span", "rx-name", r.name || r.id));
    td.appendChild(el("span", "rx-id", r.id));
    tr.appendChild(td);
    // cells with nothing to say are marked `nil` (hidden where rows become cards)
    td = el("td", "num" + (lv.last_seen ? "" : " nil")); td.appendChild(relSpan(lv.last_seen));
    tr.appendChild(td);
    tr.appendChild(el("td", "addr" + (lv.address || r.address ? "" : " nil"), lv.address || r.address || "—"));
    td = el("td");
    const link = lv.link || {};
    const q = link.quality || "none";
    if (st === "never") { td.className = "nil"; td.appendChild(el("span", "muted", "—")); } else {
      // an offline receiver's link figures are its last report: shown, but faded
      if (st === "offline") td.className = "stale";
      td.appendChild(pill("q-" + q, t("q_" + q)));
      const parts = [];
      const loss = fmt(link.fraction_lost !== null && link.fraction_lost !== undefined ? link.fraction_lost * 100 : null, 1);
      if (loss !== null) parts.push(t("loss", { v: loss }));
      const j = fmt(link.jitter_ms, 1); if (j !== null) parts.push(t("jitter", { v: j }));
      const rtt = fmt(link.rtt_ms, 1); if (rtt !== null) parts.push(t("rtt", { v: rtt }));
      if (parts.length) td.appendChild(el("span", "link-detail", parts.join(" · ")));
    }
    tr.appendChild(td);
    td = el("td");
    const p = lv.playing;
    if (st === "online" && p && p.broadcast) {
      td.appendChild(pill("lv-" + (p.level || "normal"), t(p.level || "normal")));
      const a = el("a", "playing-id", p.broadcast); a.href = "#delivery=" + encodeURIComponent(p.broadcast);
      td.appendChild(a);
    } else { td.className = "nil"; td.appendChild(el("span", "muted", "—")); }
    tr.appendChild(td);
    return tr;
  }
  function bcItem(b, past) {
    const li = el("li", "lv-b-" + b.level);
    li.dataset.broadcast = b.id;
    const top = el("div", "bc-top");
    const left = el("span");
    left.appendChild(pill("lv-" + b.level, t(b.level)));
    left.appendChild(document.createTextNode(" "));
    left.appendChild(el("code", null, b.id));
    top.appendChild(left);
    top.appendChild(el("span", "muted", t("st_" + b.state) !== "st_" + b.state ? t("st_" + b.state) : b.state));
    li.appendChild(top);
    const zones = (b.on_air_zones && b.on_air_zones.length && !past ? b.on_air_zones : (b.reached_zones || b.zones || []));
    li.appendChild(el("div", "bc-zones", zones.map(zoneName).join(", ")));
    const q = !past && S.queued[b.id];
    if (q && q !== true) {  // an urgent broadcast waiting: who holds its zones
      const waiting = (q.zones || []).filter((z) => !(b.on_air_zones || []).includes(z));
      if (waiting.length) {
        li.appendChild(el("div", "bc-queued", t("queued_behind", { zones: waiting.map(zoneName).join(", "),
          holder: q.holder || "?", who: q.holder_owner || "?" })));
      }
    }
    const meta = el("div", "bc-meta");
    const kind = b.source && b.source.kind;
    const info = [];
    if (kind) info.push(t("k_" + kind) !== "k_" + kind ? t("k_" + kind) : kind);
    if (b.owner) info.push(t("by", { who: b.owner }));
    if (past && b.ended_at) info.push(t("ended", { t: hhmmss(b.ended_at) }));
    else if (b.started_at) info.push(t("started", { t: hhmmss(b.started_at) }));
    meta.appendChild(el("span", null, info.join(" · ")));
    const a = el("a", null, t("report")); a.href = "#delivery=" + encodeURIComponent(b.id);
    a.className = "dl-link";
    meta.appendChild(a);
    li.appendChild(meta);
    return li;
  }
  function loadQueued(b) {  // a waiting urgent broadcast seen before this page opened
    S.queued[b.id] = true;
    api("GET", "/asrun?type=broadcast.queued&broadcast=" + encodeURIComponent(b.id)).then((r) => {
      const evs = (r.status === 200 && r.data.events) || [];
      if (evs.length && S.queued[b.id] === true) { S.queued[b.id] = evs[evs.length - 1]; renderBroadcasts(); }
    }).catch(() => {});
  }
  function renderBroadcasts() {
    S.broadcasts.forEach((b) => {
      if (!(b.id in S.queued) && (b.level === "emergency" || b.level === "priority")
          && (b.reached_zones || []).length > (b.on_air_zones || []).length) loadQueued(b);
    });
    const ul = $("bc-list"); ul.textContent = "";
    S.broadcasts.forEach((b) => ul.appendChild(bcItem(b, false)));
    $("bc-empty").classList.toggle("hidden", S.broadcasts.length > 0);
    const pu = $("bc-past"); pu.textContent = "";
    S.past.forEach((b) => pu.appendChild(bcItem(b, true)));
  }

  // ------------------------------------------------------------------ delivery report
  function hashDelivery() {
    const m = /^#delivery=(.+)$/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }
  async function loadDelivery(id) {
    let r, b;
    try {
      [r, b] = await Promise.all([api("GET", "/broadcasts/" + encodeURIComponent(id) + "/delivery"),
        api("GET", "/broadcasts/" + encodeURIComponent(id))]);
    } catch (e) { return; }
    if (hashDelivery() !== id) return;
    S.delivery = { id, status: r.status, report: r.status === 200 ? r.data : null,
      broadcast: b.status === 200 ? b.data : null };
  }
  async function onHash() {
    const id = hashDelivery();
    if (!id) { S.delivery = null; renderDelivery(); return; }
    S.delivery = { id, status: null, report: null, broadcast: null };
    renderDelivery();
    await loadDelivery(id);
    renderDelivery();
    $("delivery").scrollIntoView({ block: "nearest", behavior: "smooth" });
  }
  window.addEventListener("hashchange", onHash);
  $("dl-close").addEventListener("click", (e) => {
    e.preventDefault();
    history.replaceState(null, "", location.pathname + location.search);
    onHash();
  });
  function renderDelivery() {
    const box = $("delivery");
    const d = S.delivery;
    box.classList.toggle("hidden", !d);
    if (!d) return;
    $("dl-id").textContent = d.id;
    const meta = $("dl-meta"); meta.textContent = "";
    const sum = $("dl-summary"); sum.textContent = "";
    const body = $("dl-body"); body.textContent = "";
    const b = d.broadcast;
    if (b) {
      meta.appendChild(pill("lv-" + b.level, t(b.level)));
      const parts = [t("st_" + b.state) !== "st_" + b.state ? t("st_" + b.state) : b.state];
      if (b.started_at) parts.push(t("started", { t: hhmmss(b.started_at) }));
      if (b.ended_at) parts.push(t("ended", { t: hhmmss(b.ended_at) }));
      parts.push((b.reached_zones || b.zones || []).map(zoneName).join(", "));
      meta.appendChild(document.createTextNode(" " + parts.join(" · ")));
    }
    if (d.status && d.status !== 200) {
      meta.textContent = d.status === 404 ? t("dl_missing") : "HTTP " + d.status;
      $("dl-empty").classList.add("hidden");
      return;
    }
    const rep = d.report;
    if (!rep) return;
    const s = rep.summary || {};
    sum.appendChild(pill("oc-full", t("full") + ": " + (s.full || 0)));
    sum.appendChild(pill("oc-partly", t("partly") + ": " + (s.partly || 0)));
    sum.appendChild(pill("oc-never", t("never_played") + ": " + (s.never || 0)));
    const rows = rep.receivers || [];
    $("dl-empty").classList.toggle("hidden", rows.length > 0);
    for (const x of rows) {
      const tr = el("tr"); tr.dataset.receiver = x.receiver; tr.dataset.outcome = x.outcome;
      const r = findRx(x.receiver);
      const td = el("td"); td.appendChild(el("span", "rx-name", (r && r.name) || x.receiver));
      td.appendChild(el("span", "rx-id", (r && r.name ? x.receiver + " · " : "") + zoneName(x.zone)));
      tr.appendChild(td);
      const oc = el("td"); oc.appendChild(pill("oc-" + x.outcome, t(x.outcome === "never" ? "never_played" : x.outcome)));
      tr.appendChild(oc);
      const first = fmt(x.time_to_first_audio_s, 2);
      tr.appendChild(el("td", "num", first === null ? "—" : first + " s"));
      const au = fmt(x.audio_s, 1);
      tr.appendChild(el("td", "num", au === null ? "—" : au + " s"));
      body.appendChild(tr);
    }
  }

  // relative times tick without a refresh
  setInterval(() => {
    document.querySelectorAll(".rel[data-ts]").forEach((e) => { e.textContent = ago(e.dataset.ts); });
  }, 1000);

  applyLang();
  loadMe().then(() => { if (hashDelivery()) onHash(); });
})();

// Active disaster alerts (GET /api/v1/alerts?state=active), each shown in its risk level's
// colour (QĐ 18/2021/QĐ-TTg: 1 light blue, 2 light yellow, 3 orange, 4 red, 5 purple). The
// colour the server decided (risk_colour) wins; the table is for an alert stored without one.
// window.loaAlerts mirrors what the panel shows.
(function () {
  "use strict";
  const EVERY_MS = 5000;
  const RISK = { 1: "#4FC3F7", 2: "#FFF176", 3: "#FB8C00", 4: "#E53935", 5: "#8E24AA" };
  const DARK = new Set([4, 5]);  // white text on red and purple
  const W = {
    vi: { title: "Cảnh báo thiên tai đang hiệu lực", risk: "Cấp độ rủi ro {n}", no_risk: "Cảnh báo",
      zones: "{n} khu vực", until: "đến {t}", aired: "đã phát {n} lần" },
    en: { title: "Active disaster alerts", risk: "Risk level {n}", no_risk: "Alert",
      zones: "{n} zones", until: "until {t}", aired: "aired {n}×" },
  };
  const A = (window.loaAlerts = { ready: false, alerts: [], error: null, polls: 0 });
  const byId = (id) => document.getElementById(id);
  const lang = () => (document.documentElement.lang === "en" ? "en" : "vi");
  const w = (k, vars) => {
    let s = W[lang()][k];
    for (const [a, b] of Object.entries(vars || {})) s = s.replace("{" + a + "}", b);
    return s;
  };
  const when = (iso) => {
    const d = new Date(iso);
    return isNaN(d) ? "—" : d.toLocaleString(lang() === "vi" ? "vi-VN" : "en-GB",
      { hour12: false, hour: "2-digit", minute: "2-digit", day: "2-digit", month: "2-digit" });
  };
  function colour(a) {
    const c = String(a.risk_colour || "");
    return /^#[0-9a-fA-F]{6}$/.test(c) ? c : (RISK[a.risk_level] || "#c8102e");
  }
  function render() {
    const box = byId("alerts");
    if (!box) return;
    const list = byId("alerts-list");
    list.textContent = "";
    byId("alerts-title").textContent = w("title");
    byId("alerts-count").textContent = String(A.alerts.length);
    box.classList.toggle("hidden", A.alerts.length === 0);
    for (const a of A.alerts) {
      const li = document.createElement("li");
      li.dataset.id = a.id;
      li.dataset.risk = a.risk_level == null ? "" : String(a.risk_level);
      li.style.background = colour(a);
      if (DARK.has(a.risk_level) || !RISK[a.risk_level]) li.classList.add("dark");
      const risk = document.createElement("span");
      risk.className = "risk";
      risk.textContent = a.risk_level == null ? w("no_risk") : w("risk", { n: a.risk_level });
      const text = document.createElement("span");
      text.className = "al-text";
      text.textContent = (a.headline || a.text || a.identifier || "") +
        (a.sender ? " — " + a.sender : "");
      const meta = document.createElement("span");
      meta.className = "al-meta";
      meta.textContent = [w("zones", { n: (a.zones || []).length }),
        a.expires ? w("until", { t: when(a.expires) }) : "",
        a.airings ? w("aired", { n: a.airings }) : ""].filter(Boolean).join(" · ");
      li.append(risk, text, meta);
      list.append(li);
    }
  }
  async function poll() {
    const dash = window.loaDash;
    if (!dash || !dash.user) {  // signed out: nothing to ask (and no 401 in the console)
      A.alerts = [];
      render();
      return;
    }
    try {
      const r = await fetch("/api/v1/alerts?state=active", { credentials: "same-origin" });
      if (r.status === 200) {
        const body = await r.json();
        A.alerts = (body.alerts || []).slice().sort((x, y) =>
          (y.risk_level || 0) - (x.risk_level || 0) || String(y.received_at || "").localeCompare(
            String(x.received_at || "")));
        A.error = null;
        A.ready = true;
      } else {
        A.alerts = [];  // signed out, or a role that reads no alerts: nothing to show
        A.error = r.status;
      }
    } catch (e) {
      A.error = "network";  // keep what is shown; the page says the server is unreachable
    }
    A.polls += 1;
    render();
  }
  const lb = byId("lang");
  if (lb) lb.addEventListener("click", () => setTimeout(render, 0));
  setTimeout(poll, 500);  // after the page has asked who is signed in
  setInterval(poll, EVERY_MS);
})();

// Listeners (issue 18): HTTP listeners of every zone the caller may hear (Ogg and HLS), from
// GET /api/v1/listen; the tile's tooltip names the zones with listeners. Self-contained.
(function () {
  "use strict";
  const n = document.getElementById("n-listeners");
  const tile = document.getElementById("listeners-tile");
  const label = document.getElementById("listeners-label");
  if (!n || !tile) return;
  async function poll() {
    try {
      const r = await fetch("/api/v1/listen", { credentials: "same-origin" });
      if (r.status !== 200) return;
      const body = await r.json();
      const zones = (body.zones || []).filter((z) => z.listeners && z.listeners.current > 0);
      const total = zones.reduce((a, z) => a + z.listeners.current, 0);
      n.textContent = String(total);
      tile.dataset.total = String(total);
      tile.title = zones.map((z) => `${z.name || z.zone}: ${z.listeners.current}`).join("\n");
      if (label) {
        const en = (document.documentElement.lang || "vi").startsWith("en");
        label.textContent = en ? "Listeners" : "Người nghe";
      }
    } catch (e) { /* the other blocks say the server is unreachable */ }
  }
  setTimeout(poll, 700);
  setInterval(poll, 5000);
})();
