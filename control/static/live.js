// Loa live page: log in, pick zones and level, hold to talk (or latch), WebRTC to the server.
// window.loaState mirrors what the page shows (tests and the curious can read it).
(function () {
  "use strict";
  const API = "/api/v1";
  const T = {
    vi: {
      title: "Phát trực tiếp", logout: "Đăng xuất", login: "Đăng nhập", username: "Tên đăng nhập",
      password: "Mật khẩu", login_btn: "Đăng nhập", zones: "Khu vực phát", select_all: "Chọn tất cả",
      select_none: "Bỏ chọn", level: "Mức độ", idle: "Chưa phát", connecting: "Đang kết nối…",
      on_air: "ĐANG PHÁT", preempted: "Bị ngắt tạm thời", hold_to_talk: "Giữ để nói",
      release_to_stop: "Thả ra để dừng", go_live: "Bật phát trực tiếp", stop_live: "Dừng phát",
      others: "Đang phát trực tiếp", mic_settings: "Cài đặt micro", noise_suppression: "Lọc tiếng ồn",
      auto_gain: "Tự động chỉnh âm lượng",
      echo_note: "Khử tiếng vọng luôn tắt để giữ chất lượng giọng nói.",
      normal: "Thông thường", priority: "Ưu tiên", emergency: "Khẩn cấp",
      reached: "Đang đến: ", pick_zone: "Hãy chọn ít nhất một khu vực.",
      bad_login: "Sai tên đăng nhập hoặc mật khẩu.", throttled: "Thử quá nhiều lần, vui lòng đợi.",
      login_failed: "Không đăng nhập được: ", no_mic: "Không mở được micro: ",
      refused: "Khu vực đang bận: {who} đang phát trực tiếp. ", forbidden: "Bạn không có quyền: ",
      preempted_by: "Phát khẩn cấp đang chiếm {zones}: bạn tạm thời không lên sóng ở đó.",
      preempted_hi: "Một buổi phát mức cao hơn đang chiếm {zones}: bạn tạm thời không lên sóng ở đó.",
      resumed: "Đã lên sóng trở lại ở {zones}.", ended: "Buổi phát đã kết thúc: {why}",
      conn_lost: "Mất kết nối âm thanh.", failed: "Không phát được: ", you: "(bạn)",
      server_error: "Lỗi máy chủ, vui lòng thử lại.", session_expired: "Phiên đăng nhập đã hết hạn.",
      conn_off: "Micro chưa kết nối", conn_connecting: "Đang kết nối micro…", conn_ready: "Micro sẵn sàng",
      conn_failed: "Micro không kết nối được", conn_timeout: "không kết nối được tới máy chủ",
      speakers: "Mức âm tại loa", spk_silent: "Loa không nhận được tiếng: kiểm tra micro!",
    },
    en: {
      title: "Go live", logout: "Log out", login: "Log in", username: "Username", password: "Password",
      login_btn: "Log in", zones: "Zones", select_all: "Select all", select_none: "Clear", level: "Level",
      idle: "Off air", connecting: "Connecting…", on_air: "ON AIR", preempted: "Preempted",
      hold_to_talk: "Hold to talk", release_to_stop: "Release to stop", go_live: "Go live",
      stop_live: "Stop", others: "Live now", mic_settings: "Microphone settings",
      noise_suppression: "Noise suppression", auto_gain: "Automatic gain",
      echo_note: "Echo cancellation stays off to keep the voice clean.",
      normal: "Normal", priority: "Priority", emergency: "Emergency",
      reached: "Reaching: ", pick_zone: "Pick at least one zone.",
      bad_login: "Wrong username or password.", throttled: "Too many attempts, please wait.",
      login_failed: "Could not log in: ", no_mic: "Cannot open the microphone: ",
      refused: "Zone busy: {who} is live. ", forbidden: "Not allowed: ",
      preempted_by: "An emergency broadcast has taken {zones}: you are off the air there for now.",
      preempted_hi: "A higher-level broadcast has taken {zones}: you are off the air there for now.",
      resumed: "Back on air in {zones}.", ended: "The broadcast ended: {why}",
      conn_lost: "Audio connection lost.", failed: "Could not go live: ", you: "(you)",
      server_error: "Server error, please try again.", session_expired: "Your session has expired.",
      conn_off: "Microphone not connected", conn_connecting: "Connecting the microphone…",
      conn_ready: "Microphone ready", conn_failed: "Microphone cannot connect",
      conn_timeout: "cannot reach the server", speakers: "Level at the loudspeakers",
      spk_silent: "The loudspeakers get no sound: check the microphone!",
    },
  };
  const LEVEL_RANK = { background: 0, normal: 1, priority: 2, emergency: 3 };
  const $ = (id) => document.getElementById(id);
  const qs = new URLSearchParams(location.search);
  const S = (window.loaState = {
    phase: "idle", broadcast: null, notice: null, noticeKind: null, reached: [], others: [],
    user: null, error: null, startedAt: null, levelDb: -120, events: 0, lang: "vi",
  });
  let lang = qs.get("lang") || localStorage.getItem("loa.lang") || "vi";
  let zonesById = {};
  let pc = null, stream = null, audioCtx = null, analyser = null, wantStop = false, busy = false;
  let holding = false, pollTimer = null;

  const t = (k, vars) => {
    let s = (T[lang] && T[lang][k]) || T.vi[k] || k;
    for (const [a, b] of Object.entries(vars || {})) s = s.replace("{" + a + "}", b);
    return s;
  };
  function applyLang() {
    S.lang = lang;
    document.documentElement.lang = lang;
    $("lang").textContent = lang === "vi" ? "EN" : "VI";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    document.title = "Loa — " + t("title");
    renderLevels(); renderPhase();
  }
  function notice(kind, text) {
    S.notice = text; S.noticeKind = kind;
    const n = $("notice");
    if (!text) { n.classList.add("hidden"); return; }
    n.className = "notice " + kind; n.textContent = text;
  }
  async function api(method, path, body, beacon) {
    const opt = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) { opt.headers["Content-Type"] = "application/json"; opt.body = JSON.stringify(body); }
    const r = await fetch(API + path, opt);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    return { status: r.status, data };
  }
  const errMsg = (d) => (d && d.error && d.error.message) || "";
  const zoneName = (id) => (zonesById[id] && zonesById[id].name) || id;
  const zoneList = (ids) => (ids || []).map(zoneName).join(", ");

  // ------------------------------------------------------------------ login
  async function loadMe() {
    let r;
    try { r = await api("GET", "/session"); } catch (e) { r = { status: 0 }; }
    if (r.status === 200 && r.data) {
      const u = r.data;
      // GET /api/v1/session: {name, role, user_id, scope, via, max_level, zones}; zones null =
      // everywhere (older servers without it: the scope, empty meaning everywhere)
      S.user = { name: u.name, display_name: u.display_name, role: u.role, max_level: u.max_level,
        zones: "zones" in u ? u.zones : (u.scope && u.scope.length ? u.scope : null) };
      return showConsole();
    }
    S.user = null;
    if (typeof closeMic === "function") { closeMic(); connState("off"); }
    if (es) { es.close(); es = null; }
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
    $("console").classList.add("hidden"); $("logout").classList.add("hidden");
    $("login").classList.remove("hidden"); $("who").textContent = "";
  }
  $("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const e = $("login-error"); e.classList.add("hidden");
    let r;
    const cred = { username: $("username").value, password: $("password").value };
    try { r = await api("POST", "/session", cred); } catch (x) { r = { status: 0, data: null }; }
    if (r.status >= 200 && r.status < 300) { $("password").value = ""; return loadMe(); }
    e.textContent = r.status === 401 ? t("bad_login") : r.status === 429 ? t("throttled")
      : t("login_failed") + (errMsg(r.data) || r.status);
    e.classList.remove("hidden");
  });
  $("logout").addEventListener("click", async () => {
    await stopLive("logout");
    try { await api("DELETE", "/session"); } catch (e) { /* offline */ }
    loadMe();
  });

  // ------------------------------------------------------------------ zones and levels
  function allowedZone(z, allowed) {
    if (!allowed || allowed.includes("*")) return true;
    for (let cur = z; cur; cur = zonesById[cur.parent]) if (allowed.includes(cur.id)) return true;
    return false;
  }
  async function showConsole() {
    $("login").classList.add("hidden"); $("console").classList.remove("hidden");
    $("logout").classList.remove("hidden");
    $("who").textContent = (S.user.display_name || S.user.name) + (S.user.role ? " · " + S.user.role : "");
    const r = await api("GET", "/zones");
    const zones = (r.data && r.data.zones) || [];
    zonesById = {}; zones.forEach((z) => (zonesById[z.id] = z));
    const mine = zones.filter((z) => allowedZone(z, S.user.zones));
    const last = JSON.parse(localStorage.getItem("loa.zones") || "[]");
    const pre = (qs.get("zones") || "").split(",").filter(Boolean);
    const box = $("zones"); box.textContent = "";
    for (const z of mine) {
      const lab = document.createElement("label"); lab.className = "zone"; lab.dataset.zone = z.id;
      const cb = document.createElement("input"); cb.type = "checkbox"; cb.value = z.id;
      cb.checked = pre.length ? pre.includes(z.id) : (mine.length === 1 || last.includes(z.id));
      cb.addEventListener("change", () => localStorage.setItem("loa.zones", JSON.stringify(selectedZones())));
      const span = document.createElement("span"); span.textContent = z.name || z.id;
      const busyBy = document.createElement("span"); busyBy.className = "busy-by";
      span.appendChild(busyBy); lab.append(cb, span); box.appendChild(lab);
    }
    renderLevels(); openEvents(); poll();
    if (!C.session && S.conn !== "connecting") connectMic();
    if (!pollTimer) pollTimer = setInterval(poll, 2000);
  }
  const selectedZones = () => [...document.querySelectorAll("#zones input:checked")].map((c) => c.value);
  $("zones-all").onclick = () => document.querySelectorAll("#zones input").forEach((c) => (c.checked = true));
  $("zones-none").onclick = () => document.querySelectorAll("#zones input").forEach((c) => (c.checked = false));

  function renderLevels() {
    const box = $("levels"); if (!box || !S.user) return;
    const cur = selectedLevel() || qs.get("level") || "normal";
    // the server says the highest level this user may start (null: none, e.g. a viewer);
    // alert authorities start emergencies only
    const ml = S.user.max_level;
    const max = ml === null ? -1 : LEVEL_RANK[ml] !== undefined ? LEVEL_RANK[ml] : LEVEL_RANK.priority;
    const levels = S.user.role === "alert_authority" ? ["emergency"]
      : ["normal", "priority", "emergency"].filter((l) => LEVEL_RANK[l] <= max);
    box.textContent = "";
    for (const l of levels) {
      const lab = document.createElement("label"); lab.className = "level " + l;
      const rb = document.createElement("input"); rb.type = "radio"; rb.name = "level"; rb.value = l;
      rb.checked = l === cur || (l === levels[0] && !levels.includes(cur));
      const span = document.createElement("span"); span.textContent = t(l);
      lab.append(rb, span); box.appendChild(lab);
    }
  }
  function selectedLevel() {
    const c = document.querySelector("#levels input:checked"); return c ? c.value : null;
  }

  // ------------------------------------------------------------------ state display
  function setPhase(p) { S.phase = p; renderPhase(); }
  function renderPhase() {
    const st = $("state"); if (!st) return;
    st.className = "state " + S.phase;
    $("state-text").textContent = t(S.phase === "ended" || S.phase === "refused" ? "idle" : S.phase);
    const live = S.phase !== "idle" && S.phase !== "ended" && S.phase !== "refused";
    const l = $("latch");
    l.setAttribute("aria-pressed", live && !holding ? "true" : "false");
    l.textContent = t(live && !holding ? "stop_live" : "go_live");
    l.disabled = holding;
    $("ptt").classList.toggle("active", holding);
    $("ptt").textContent = t(holding ? "release_to_stop" : "hold_to_talk");
    $("ptt").disabled = live && !holding;
    $("reached").textContent = S.reached.length && live ? t("reached") + zoneList(S.reached) : "";
    document.querySelectorAll("#zones input, #levels input").forEach((i) => (i.disabled = live));
  }
  setInterval(() => {
    const s = S.startedAt ? Math.floor((Date.now() - S.startedAt) / 1000) : 0;
    $("elapsed").textContent = String(Math.floor(s / 60)).padStart(2, "0") + ":" + String(s % 60).padStart(2, "0");
  }, 250);

  function meterLoop() {
    if (!analyser) { $("meter-bar").style.width = "0"; S.levelDb = -120; return; }
    const buf = new Float32Array(analyser.fftSize);
    analyser.getFloatTimeDomainData(buf);
    let sum = 0; for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
    const db = 10 * Math.log10(sum / buf.length + 1e-12);
    S.levelDb = Math.round(db * 10) / 10;
    $("meter-bar").style.width = Math.max(0, Math.min(100, ((db + 60) / 60) * 100)) + "%";
    requestAnimationFrame(meterLoop);
  }

  // ------------------------------------------------------------------ going live
  function waitIce(p) {
    if (p.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((res) => {
      const done = () => { if (p.iceGatheringState === "complete") { p.removeEventListener("icegatheringstatechange", done); res(); } };
      p.addEventListener("icegatheringstatechange", done);
      setTimeout(res, 2500);
    });
  }
  async function startLive() {
    if (busy || (S.phase !== "idle" && S.phase !== "ended" && S.phase !== "refused")) return;
    if (S.conn === "ready" && C.session) return talk();
    const zones = selectedZones();
    if (!zones.length) { notice("warn", t("pick_zone")); return; }
    busy = true; wantStop = false; notice(null, null); S.reached = []; S.startedAt = null;
    setPhase("connecting");
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: {
        echoCancellation: false, noiseSuppression: $("opt-ns").checked,
        autoGainControl: $("opt-agc").checked, channelCount: 1 } });
    } catch (e) {
      busy = false; setPhase("idle"); notice("error", t("no_mic") + (e.message || e.name)); return;
    }
    try {
      audioCtx = new (window.AudioContext || window.webkitAudioContext)();
      analyser = audioCtx.createAnalyser(); analyser.fftSize = 1024;
      audioCtx.createMediaStreamSource(stream).connect(analyser);
      if (audioCtx.state === "suspended") audioCtx.resume().catch(() => {});
      requestAnimationFrame(meterLoop);
    } catch (e) { analyser = null; }
    pc = new RTCPeerConnection({ iceServers: [] });
    stream.getAudioTracks().forEach((tr) => pc.addTrack(tr, stream));
    pc.onconnectionstatechange = () => {
      const s = pc && pc.connectionState;
      if ((s === "failed" || s === "closed") && S.broadcast) {
        notice("error", t("conn_lost")); stopLive("connection " + s);
      }
    };
    let r;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitIce(pc);
      r = await api("POST", "/live/offer", { sdp: pc.localDescription.sdp, type: "offer",
        zones, level: selectedLevel() || "normal" });
    } catch (e) { r = { status: 0, data: { error: { message: String(e) } } }; }
    if (r.status === 201 && r.data) {
      S.broadcast = r.data.broadcast.id;
      S.reached = r.data.broadcast.reached_zones || zones;
      try { await pc.setRemoteDescription({ type: r.data.type, sdp: r.data.sdp }); }
      catch (e) { busy = false; notice("error", t("failed") + e); return stopLive("bad answer"); }
      busy = false;
      if (wantStop) return stopLive("released");
      watchConnected();
      return;
    }
    busy = false;
    cleanupMedia();
    if (r.status === 409) {
      const d = r.data && r.data.error || {};
      const who = d.holder_name || (d.holder && d.holder.owner) || "?";
      S.refusedBy = who;
      setPhase("refused"); notice("error", t("refused", { who }) + (d.message || ""));
    } else if (r.status === 401) {
      setPhase("idle"); notice("error", t("session_expired")); loadMe();
    } else if (r.status === 403) {
      setPhase("idle"); notice("error", t("forbidden") + errMsg(r.data));
    } else {
      setPhase("idle"); notice("error", t("failed") + (errMsg(r.data) || t("server_error")));
    }
  }
  function watchConnected() {
    const check = () => {
      if (!pc || !S.broadcast) return;
      if (pc.connectionState === "connected") {
        if (S.phase === "connecting") { S.startedAt = Date.now(); setPhase("on_air"); }
      } else setTimeout(check, 100);
    };
    check();
  }
  function cleanupMedia() {
    if (pc) { try { pc.close(); } catch (e) { /* closed */ } pc = null; }
    if (stream) { stream.getTracks().forEach((tr) => tr.stop()); stream = null; }
    if (audioCtx) { audioCtx.close().catch(() => {}); audioCtx = null; }
    analyser = null;
  }
  async function stopLive(why) {
    if (S.talking) return untalk(why);
    if (busy) { wantStop = true; return; }
    const id = S.broadcast;
    S.broadcast = null;
    cleanupMedia();
    if (id) { try { await api("DELETE", "/live/" + encodeURIComponent(id)); } catch (e) { /* gone */ } }
    S.startedAt = null; S.reached = [];
    if (S.phase !== "refused") setPhase(id ? "ended" : "idle"); else renderPhase();
    S.lastStop = why || "";
  }
  function endedByServer(ev) {
    if (S.talking) endTalk(); else cleanupMedia();
    S.broadcast = null; S.startedAt = null;
    setPhase("ended");
    notice(ev.type === "broadcast.finished" ? "info" : "warn",
      t("ended", { why: ev.reason || ev.error || ev.type }));
  }

  // ------------------------------------------------------------------ standing connection (issue 17)
  // The microphone connects when the official signs in (track muted); pressing talk only unmutes
  // and claims the zones, so the first syllable airs. S.conn: off | connecting | ready | failed.
  const C = { pc: null, stream: null, track: null, session: null, retry: 0, timer: null, gen: 0 };
  S.conn = "off"; S.session = null; S.talking = false; S.speakerDb = -120; S.pressAt = null;
  function connState(st, why) {
    S.conn = st;
    const el = $("conn"); if (!el) return;
    el.className = "conn " + st; el.textContent = t("conn_" + st) + (why ? " — " + why : "");
  }
  function closeMic() {
    C.gen++;
    if (C.timer) { clearTimeout(C.timer); C.timer = null; }
    const sid = C.session;
    if (C.pc) { try { C.pc.close(); } catch (e) { /* closed */ } C.pc = null; }
    if (C.stream) { C.stream.getTracks().forEach((tr) => tr.stop()); C.stream = null; }
    C.track = null; C.session = null; S.session = null;
    if (sid) api("DELETE", "/live/sessions/" + encodeURIComponent(sid)).catch(() => {});
  }
  function reconnectSoon(why) {
    if (!S.user) return;
    connState("failed", why);
    if (C.timer) return;
    const wait = Math.min(10000, 500 * Math.pow(2, C.retry++));
    C.timer = setTimeout(() => { C.timer = null; connectMic(); }, wait);
  }
  function attachMeter() {   // the phone's own meter, on the standing connection's microphone
    try {
      if (!audioCtx || !analyser || audioCtx.state === "closed") {
        audioCtx = new (window.AudioContext || window.webkitAudioContext)();
        analyser = audioCtx.createAnalyser(); analyser.fftSize = 1024; C.node = null;
        requestAnimationFrame(meterLoop);
      }
      if (C.node) C.node.disconnect();
      C.node = audioCtx.createMediaStreamSource(C.stream); C.node.connect(analyser);
      if (audioCtx.state === "suspended") audioCtx.resume().catch(() => {});
    } catch (e) { analyser = null; }
  }
  async function connectMic() {
    if (!S.user || !navigator.mediaDevices || !window.RTCPeerConnection) return;
    if (S.talking) return;
    closeMic();
    const gen = C.gen;
    connState("connecting");
    try {
      C.stream = await navigator.mediaDevices.getUserMedia({ audio: {
        echoCancellation: false, noiseSuppression: $("opt-ns").checked,
        autoGainControl: $("opt-agc").checked, channelCount: 1 } });
    } catch (e) { connState("failed", t("no_mic") + (e.message || e.name)); return; }
    if (gen !== C.gen) return;
    C.track = C.stream.getAudioTracks()[0];
    C.track.enabled = false;   // muted: the browser sends silence until the press
    attachMeter();
    const p = C.pc = new RTCPeerConnection({ iceServers: [] });
    p.addTrack(C.track, C.stream);
    p.onconnectionstatechange = () => {
      if (gen !== C.gen) return;
      const s = p.connectionState;
      if (s === "connected") { C.retry = 0; connState("ready"); }
      else if (s === "failed" || s === "closed") {
        if (S.talking) { notice("error", t("conn_lost")); endTalk(); }
        reconnectSoon(t("conn_lost"));
      }
    };
    let r;
    try {
      await p.setLocalDescription(await p.createOffer());
      await waitIce(p);
      r = await api("POST", "/live/connect", { sdp: p.localDescription.sdp, type: "offer" });
    } catch (e) { r = { status: 0, data: { error: { message: String(e) } } }; }
    if (gen !== C.gen) return;
    if (r.status === 201 && r.data) {
      C.session = S.session = r.data.session;
      try { await p.setRemoteDescription({ type: r.data.type, sdp: r.data.sdp }); }
      catch (e) { return reconnectSoon(String(e)); }
      // no connection within 8 s: say so now, not when the official presses talk
      setTimeout(() => { if (gen === C.gen && S.conn === "connecting") reconnectSoon(t("conn_timeout")); }, 8000);
      return;
    }
    if (r.status === 401) { connState("off"); return loadMe(); }
    if (r.status === 403) { connState("off"); return; }   // a role that may not go live
    reconnectSoon(errMsg(r.data) || t("server_error"));
  }
  async function talk() {
    const zones = selectedZones();
    if (!zones.length) { notice("warn", t("pick_zone")); return; }
    busy = true; wantStop = false; notice(null, null); S.reached = []; S.startedAt = null;
    S.talking = true; S.pressAt = performance.now();
    C.track.enabled = true;   // the audio from this instant on is what airs
    if (!analyser && C.stream) attachMeter();
    setPhase("connecting");
    let r;
    try {
      r = await api("POST", "/live/sessions/" + encodeURIComponent(C.session) + "/claim",
        { zones, level: selectedLevel() || "normal" });
    } catch (e) { r = { status: 0, data: { error: { message: String(e) } } }; }
    busy = false;
    if (r.status === 201 && r.data) {
      S.broadcast = r.data.broadcast.id;
      S.reached = r.data.broadcast.reached_zones || zones;
      S.claimMs = Math.round(performance.now() - S.pressAt);
      S.startedAt = Date.now(); setPhase("on_air"); talkback();
      if (wantStop) return untalk("released");
      return;
    }
    S.talking = false; if (C.track) C.track.enabled = false;
    if (r.status === 404) { reconnectSoon(t("conn_lost")); }
    if (r.status === 409) {
      const d = r.data && r.data.error || {};
      const who = d.holder_name || (d.holder && d.holder.owner) || "?";
      S.refusedBy = who;
      setPhase("refused"); notice("error", t("refused", { who }) + (d.message || ""));
    } else if (r.status === 401) {
      setPhase("idle"); notice("error", t("session_expired")); loadMe();
    } else if (r.status === 403) {
      setPhase("idle"); notice("error", t("forbidden") + errMsg(r.data));
    } else {
      setPhase("idle"); notice("error", t("failed") + (errMsg(r.data) || t("server_error")));
    }
  }
  function endTalk() {
    S.talking = false; S.broadcast = null; S.startedAt = null; S.reached = [];
    const tr = C.track;
    // the server fades the claim out over the audio that follows the release
    setTimeout(() => { if (tr && !S.talking) tr.enabled = false; }, 120);
  }
  async function untalk(why) {
    if (busy) { wantStop = true; return; }
    const id = S.broadcast;
    endTalk();
    if (C.session) {
      try { await api("POST", "/live/sessions/" + encodeURIComponent(C.session) + "/release"); }
      catch (e) { /* gone */ }
    }
    if (S.phase !== "refused") setPhase(id ? "ended" : "idle"); else renderPhase();
    S.lastStop = why || "";
  }
  // talk-back: the level the claimed zones' loudspeakers get (the programme, not this phone)
  async function talkback() {
    while (S.talking && S.broadcast && C.session) {
      try {
        const r = await api("GET", "/live/sessions/" + encodeURIComponent(C.session));
        const sp = r.data && r.data.speakers;
        if (sp) {
          S.speakerDb = sp.peak_db;
          $("spk-bar").style.width = Math.max(0, Math.min(100, ((sp.peak_db + 60) / 60) * 100)) + "%";
          S.speakerSilentSince = sp.peak_db > -50 ? null : (S.speakerSilentSince || Date.now());
          $("spk-warn").classList.toggle("hidden", !(S.speakerSilentSince && Date.now() - S.speakerSilentSince > 1000));
        }
      } catch (e) { /* offline: the connection state says so */ }
      await new Promise((res) => setTimeout(res, 250));
    }
    $("spk-bar").style.width = "0"; $("spk-warn").classList.add("hidden"); S.speakerSilentSince = null;
  }
  window.addEventListener("online", () => { if (S.user && !S.talking) connectMic(); });
  if (navigator.connection && navigator.connection.addEventListener)
    navigator.connection.addEventListener("change", () => { if (S.user && !S.talking) connectMic(); });

  // hold to talk: pointer (touch and mouse) and the space bar
  const ptt = $("ptt");
  ptt.addEventListener("pointerdown", (e) => { e.preventDefault(); holding = true; renderPhase(); startLive(); });
  const release = () => { if (!holding) return; holding = false; renderPhase(); stopLive("released"); };
  ["pointerup", "pointercancel", "pointerleave"].forEach((n) => ptt.addEventListener(n, release));
  ptt.addEventListener("contextmenu", (e) => e.preventDefault());
  document.addEventListener("keydown", (e) => {
    if (e.code === "Space" && !e.repeat && !holding && S.user && document.activeElement.tagName !== "INPUT") {
      e.preventDefault(); holding = true; renderPhase(); startLive();
    }
  });
  document.addEventListener("keyup", (e) => { if (e.code === "Space") release(); });
  $("latch").addEventListener("click", () => {
    if (S.phase === "idle" || S.phase === "ended" || S.phase === "refused") startLive(); else stopLive("stopped");
  });
  window.addEventListener("pagehide", () => {
    if (S.broadcast) navigator.sendBeacon(API + "/live/" + encodeURIComponent(S.broadcast) + "/hangup");
  });

  // ------------------------------------------------------------------ events and polling
  let es = null;
  function openEvents() {
    if (es) return;
    es = new EventSource(API + "/events");
    const types = ["broadcast.created", "broadcast.started", "broadcast.preempted", "broadcast.resumed",
      "broadcast.stopped", "broadcast.finished", "broadcast.refused"];
    types.forEach((ty) => es.addEventListener(ty, (m) => {
      let ev; try { ev = JSON.parse(m.data); } catch (e) { return; }
      S.events++;
      onEvent(ev);
    }));
  }
  const emergencies = new Set();
  function onEvent(ev) {
    const mine = S.broadcast && ev.broadcast === S.broadcast;
    if (ev.level === "emergency" && ev.broadcast) {
      if (ev.type === "broadcast.created" || ev.type === "broadcast.started") emergencies.add(ev.broadcast);
      if (ev.type === "broadcast.stopped" || ev.type === "broadcast.finished") emergencies.delete(ev.broadcast);
    }
    if (mine && ev.type === "broadcast.preempted") {
      // the event does not say who took the zone: the emergencies seen on the event stream
      // (or, failing that, the broadcast list) do
      S.preemptedZones = ev.zones;
      setPhase("preempted");
      const byEmergency = () => emergencies.size > 0 || S.others.some((b) => b.level === "emergency");
      notice("warn", t(byEmergency() ? "preempted_by" : "preempted_hi", { zones: zoneList(ev.zones) }));
      if (!byEmergency()) poll().then(() => {
        if (S.phase === "preempted" && byEmergency())
          notice("warn", t("preempted_by", { zones: zoneList(S.preemptedZones) }));
      });
    } else if (mine && ev.type === "broadcast.resumed") {
      notice("info", t("resumed", { zones: zoneList(ev.zones) })); S.preemptedZones = [];
      if (S.phase === "preempted") setPhase("on_air");
    } else if (mine && ev.type === "broadcast.started") {
      S.reached = ev.zones || S.reached;
      if (S.phase === "connecting") { S.startedAt = Date.now(); setPhase("on_air"); } else renderPhase();
    } else if (mine && (ev.type === "broadcast.stopped" || ev.type === "broadcast.finished")) {
      if (ev.reason !== "hung up") endedByServer(ev);
    } else if (!mine) {
      poll();
    }
  }
  let polling = false;
  async function poll() {
    if (polling || !S.user) return;
    polling = true;
    try {
      const r = await api("GET", "/broadcasts");
      if (r.status === 401) { polling = false; return loadMe(); }
      const all = (r.data && r.data.broadcasts) || [];
      S.others = all.filter((b) => b.id !== S.broadcast && (b.live || b.level === "emergency"))
        .map((b) => ({ id: b.id, owner: b.owner, owner_name: b.owner_name, level: b.level, zones: b.reached_zones, live: b.live }));
      const ul = $("others"); ul.textContent = "";
      for (const b of S.others.filter((x) => x.live)) {
        const li = document.createElement("li");
        li.textContent = (b.owner_name || b.owner || b.id) + " — " + zoneList(b.zones) + " (" + t(b.level) + ")";
        ul.appendChild(li);
      }
      document.querySelectorAll("#zones .zone").forEach((lab) => {
        const h = S.others.find((b) => b.live && (b.zones || []).includes(lab.dataset.zone));
        lab.classList.toggle("busy", !!h);
        lab.querySelector(".busy-by").textContent = h ? "● " + (h.owner_name || h.owner || "") : "";
      });
      const me = all.find((b) => b.id === S.broadcast);
      if (me) {
        if (me.on_air_zones && me.on_air_zones.length) S.reached = me.on_air_zones;
        if (me.preempted_zones && me.preempted_zones.length && S.phase === "on_air") {
          notice("warn", t(S.others.some((b) => b.level === "emergency") ? "preempted_by" : "preempted_hi",
            { zones: zoneList(me.preempted_zones) }));
          setPhase("preempted");
        } else if (S.phase === "preempted" && me.preempted_zones && !me.preempted_zones.length) {
          setPhase("on_air");
        } else renderPhase();
      }
    } catch (e) { /* offline: try again later */ }
    polling = false;
  }

  // ------------------------------------------------------------------ start
  $("opt-ns").checked = (qs.get("ns") || localStorage.getItem("loa.ns") || "0") === "1";
  $("opt-agc").checked = (qs.get("agc") || localStorage.getItem("loa.agc") || "0") === "1";
  $("opt-ns").onchange = () => localStorage.setItem("loa.ns", $("opt-ns").checked ? "1" : "0");
  $("opt-agc").onchange = () => localStorage.setItem("loa.agc", $("opt-agc").checked ? "1" : "0");
  $("lang").addEventListener("click", () => { lang = lang === "vi" ? "en" : "vi"; localStorage.setItem("loa.lang", lang); applyLang(); });
  applyLang();
  loadMe();
})();
