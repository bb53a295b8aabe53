// Loa live page, "read a message" mode (đọc văn bản): type or paste a text, hear it on the phone
// (POST /api/v1/tts/preview: the words that will be spoken + WAV), send it to the zones ticked
// above (POST /api/v1/broadcasts, source {kind: "tts"}), follow it and stop it.
// Self-contained beside live.js: it reads the page's zone and level pickers from the DOM and the
// language from <html lang>, keeps its own texts, and mirrors its state in window.loaText.
// Language variants: when the ticked zones list other languages (a zone's `languages`, inherited
// from its parents), the official adds, per language, a recording of the library tagged with it,
// or a text where a TTS engine reads that language; the request then carries `variants` as POST
// /broadcasts takes them (the typed text is the first, Vietnamese), and each zone airs its
// languages in its order as one item.
(function () {
  "use strict";
  const API = "/api/v1";
  const T = {
    vi: {
      tts_title: "Đọc văn bản", tts_text: "Nội dung cần đọc",
      tts_placeholder: "Nhập hoặc dán nội dung thông báo…", tts_voice: "Giọng đọc",
      tts_rate: "Tốc độ", tts_preview: "Nghe thử", tts_send: "Phát văn bản",
      tts_stop: "Dừng phát", tts_words: "Sẽ được đọc là:", default_voice: "Mặc định của khu vực",
      slow: "Chậm", normal_rate: "Bình thường", fast: "Nhanh",
      v_vi: "Giọng Bắc", "v_vi-vn-x-central": "Giọng Trung", "v_vi-vn-x-south": "Giọng Nam",
      chars: "{n} / {max} ký tự", previewing: "Đang tạo bản nghe thử…",
      previewed: "Bản nghe thử dài {s} giây.", preview_part: " (chỉ phần đầu của văn bản)",
      stale: "Nội dung đã sửa: hãy nghe thử lại.", sending: "Đang gửi…",
      queued: "Đang chờ đến lượt ở {zones}.", playing: "Đang đọc ở {zones}.",
      finished: "Đã đọc xong.", stopped: "Đã dừng.", failed_state: "Không đọc được: {why}",
      pick_zone: "Hãy chọn ít nhất một khu vực.", empty: "Hãy nhập nội dung cần đọc.",
      e_empty_text: "Văn bản trống.", e_text_too_long: "Văn bản quá dài.",
      e_control_characters: "Văn bản có ký tự điều khiển không đọc được.",
      e_unreadable_script: "Văn bản có chữ viết mà giọng tiếng Việt không đọc được.",
      e_unknown_voice: "Không có giọng đọc này.", e_unknown_engine: "Không có bộ đọc này.",
      e_tts_failed: "Bộ đọc bị lỗi.", e_zone_busy: "Khu vực đang bận.",
      e_forbidden: "Bạn không có quyền.", e_unknown_zone: "Không có khu vực này.",
      e_too_many: "Quá nhiều lượt phát, vui lòng đợi.", e_other: "Không thực hiện được.",
      e_session: "Phiên đăng nhập đã hết hạn.", e_network: "Mất kết nối với máy chủ.",
      tts_variants: "Ngôn ngữ khác của khu vực", v_none: "Không có (nghe bản tiếng Việt)",
      v_text: "Đọc văn bản bằng ngôn ngữ này", v_text_placeholder: "Nội dung bằng {lang}…",
      v_hint: "Khu vực nói {langs}: thêm bản ghi âm (hoặc văn bản) cho từng ngôn ngữ, khu vực sẽ phát lần lượt.",
      v_no_media: "(chưa có bản ghi âm {lang} trong thư viện)", v_empty: "Hãy nhập nội dung {lang}.",
      e_unknown_media: "Không có bản ghi âm này.", e_media_unplayable: "Bản ghi âm không phát được.",
      e_validation: "Yêu cầu không hợp lệ.",
    },
    en: {
      tts_title: "Read a message", tts_text: "Text to read",
      tts_placeholder: "Type or paste the notice…", tts_voice: "Voice", tts_rate: "Speed",
      tts_preview: "Preview", tts_send: "Read it on air", tts_stop: "Stop",
      tts_words: "Will be read as:", default_voice: "The zone's default",
      slow: "Slow", normal_rate: "Normal", fast: "Fast",
      v_vi: "Northern voice", "v_vi-vn-x-central": "Central voice", "v_vi-vn-x-south": "Southern voice",
      chars: "{n} / {max} characters", previewing: "Making the preview…",
      previewed: "The preview lasts {s} s.", preview_part: " (the beginning of the text only)",
      stale: "The text changed: preview it again.", sending: "Sending…",
      queued: "Waiting for its turn in {zones}.", playing: "Being read in {zones}.",
      finished: "Finished.", stopped: "Stopped.", failed_state: "Could not be read: {why}",
      pick_zone: "Pick at least one zone.", empty: "Type the text to read.",
      e_empty_text: "The text is empty.", e_text_too_long: "The text is too long.",
      e_control_characters: "The text contains control characters.",
      e_unreadable_script: "The text contains letters the Vietnamese voices cannot read.",
      e_unknown_voice: "No such voice.", e_unknown_engine: "No such speech engine.",
      e_tts_failed: "The speech engine failed.", e_zone_busy: "Zone busy.",
      e_forbidden: "Not allowed.", e_unknown_zone: "No such zone.",
      e_too_many: "Too many broadcasts, please wait.", e_other: "Could not do it.",
      e_session: "Your session has expired.", e_network: "The server cannot be reached.",
      tts_variants: "The zones' other languages", v_none: "None (they hear the Vietnamese)",
      v_text: "Read a text in this language", v_text_placeholder: "The text in {lang}…",
      v_hint: "These zones speak {langs}: add a recording (or a text) per language; each zone airs them one after another.",
      v_no_media: "(no {lang} recording in the library yet)", v_empty: "Type the {lang} text.",
      e_unknown_media: "No such recording.", e_media_unplayable: "The recording cannot be played.",
      e_validation: "The request is not valid.",
    },
  };
  // how the page names the languages zones list (codes as the settings file writes them)
  const LANG_NAMES = {
    vi: "Tiếng Việt", bahnar: "Ba Na", "ba-na": "Ba Na", cham: "Chăm", hre: "Hrê", ede: "Ê Đê",
    jrai: "Gia Rai", khmer: "Khmer", hmong: "H'Mông", tay: "Tày", thai: "Thái", muong: "Mường",
    sedang: "Xơ Đăng", koho: "Cơ Ho",
  };
  const langName = (code) => LANG_NAMES[code] || code;
  const $ = (id) => document.getElementById(id);
  const card = $("tts");
  if (!card) return;
  const S = (window.loaText = {
    phase: "idle", words: null, previewSeconds: 0, previewBytes: 0, broadcast: null,
    broadcasts: [], state: null, error: null, errorCode: null, voices: null,
    languages: [], variants: [], request: null,
  });
  let zonesById = null;
  const mediaByLang = {};
  let maxChars = 20000, pollTimer = null, previewedText = null;
  const lang = () => (document.documentElement.lang === "en" ? "en" : "vi");
  const t = (k, vars) => {
    let s = T[lang()][k] || T.vi[k] || k;
    for (const [a, b] of Object.entries(vars || {})) s = s.replace("{" + a + "}", b);
    return s;
  };
  const zoneName = (id) => {
    const lab = document.querySelector('#zones .zone[data-zone="' + CSS.escape(id) + '"] span');
    return lab ? lab.firstChild.textContent : id;
  };
  const zoneList = (ids) => (ids || []).map(zoneName).join(", ");
  const selectedZones = () => [...document.querySelectorAll("#zones input:checked")].map((c) => c.value);
  const selectedLevel = () => {
    const c = document.querySelector("#levels input:checked"); return c ? c.value : "normal";
  };

  async function api(method, path, body) {
    const opt = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) { opt.headers["Content-Type"] = "application/json"; opt.body = JSON.stringify(body); }
    let r;
    try { r = await fetch(API + path, opt); } catch (e) { return { status: 0, data: null }; }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    return { status: r.status, data };
  }
  function show(kind, text) {
    const m = $("tts-msg");
    m.className = "tts-msg " + (kind || "");
    m.textContent = text || "";
    m.classList.toggle("hidden", !text);
  }
  function fail(r) {
    const e = (r.data && r.data.error) || {};
    const code = r.status === 0 ? "network" : r.status === 401 ? "session"
      : r.status === 403 ? "forbidden" : r.status === 429 ? "too_many" : e.code || "other";
    S.error = e.message || String(r.status); S.errorCode = code;
    const key = T.vi["e_" + code] ? "e_" + code : "e_other";
    // the Vietnamese sentence first, then the server's own words (they name the problem)
    show("error", t(key) + (e.message ? " " + e.message : ""));
  }

  // ------------------------------------------------------------------ the form
  function applyLang() {
    card.querySelectorAll("[data-tts-i18n]").forEach((el) => { el.textContent = t(el.dataset.ttsI18n); });
    $("tts-text").placeholder = t("tts_placeholder");
    renderVoices(); renderCount(); renderVariants();
    if (S.broadcast && S.state) renderState();
  }
  function renderCount() {
    $("tts-count").textContent = t("chars", { n: $("tts-text").value.length.toLocaleString(lang()),
      max: maxChars.toLocaleString(lang()) });
    $("tts-count").classList.toggle("over", $("tts-text").value.length > maxChars);
  }
  function renderVoices() {
    const sel = $("tts-voice"), cur = sel.value;
    sel.textContent = "";
    const add = (value, label) => {
      const o = document.createElement("option"); o.value = value; o.textContent = label; sel.appendChild(o);
    };
    add("", t("default_voice"));
    const v = S.voices;
    if (v) {
      for (const e of v.engines || []) {
        for (const name of e.voices || []) {
          const nice = T.vi["v_" + name] ? t("v_" + name) + " (" + name + ")" : name;
          add(JSON.stringify([e.name, name]), (v.engines.length > 1 ? e.name + ": " : "") + nice);
        }
      }
    }
    sel.value = [...sel.options].some((o) => o.value === cur) ? cur : "";
  }
  async function loadVoices() {
    if (!S.voices) {
      const r = await api("GET", "/tts/voices");
      if (r.status === 200 && r.data) {
        S.voices = r.data; maxChars = r.data.max_chars || maxChars;
        renderVoices(); renderCount();
      }
    }
    if (!zonesById) {
      const z = await api("GET", "/zones");
      if (z.status === 200 && z.data) {
        zonesById = {};
        (z.data.zones || []).forEach((x) => (zonesById[x.id] = x));
      }
    }
    renderVariants();
  }

  // ------------------------------------------------------------------ language variants
  // a zone's languages as control/variants.py decides them: its own, else its parent's, else
  // its `language` (else Vietnamese)
  function zoneLanguages(id) {
    const seen = new Set();
    for (let cur = zonesById && zonesById[id]; cur && !seen.has(cur.id); cur = zonesById[cur.parent]) {
      seen.add(cur.id);
      if (cur.languages && cur.languages.length) return cur.languages;
    }
    const z = zonesById && zonesById[id];
    return [(z && z.language) || "vi"];
  }
  // the languages a TTS engine reads (GET /tts/voices: each engine's `language`)
  const spokenLanguages = () => new Set(((S.voices && S.voices.engines) || []).map((e) => e.language || "vi"));
  async function loadMedia(lang) {
    if (mediaByLang[lang]) return mediaByLang[lang];
    const r = await api("GET", "/media?language=" + encodeURIComponent(lang));
    mediaByLang[lang] = (r.status === 200 && r.data && r.data.media) || [];
    return mediaByLang[lang];
  }
  async function renderVariants() {
    if (!zonesById) return;
    const langs = [];
    for (const id of selectedZones()) {
      for (const l of zoneLanguages(id)) if (l !== "vi" && !langs.includes(l)) langs.push(l);
    }
    S.languages = langs;
    const box = $("tts-variants"), rows = $("tts-variant-rows");
    box.classList.toggle("hidden", !langs.length);
    $("tts-variant-hint").textContent = langs.length ? t("v_hint", { langs: langs.map(langName).join(", ") }) : "";
    // keep what the official chose for a language still listed; drop the others
    const keep = {};
    rows.querySelectorAll(".tts-variant").forEach((row) => {
      keep[row.dataset.lang] = { choice: row.querySelector("select").value, text: row.querySelector("textarea").value };
    });
    rows.textContent = "";
    const spoken = spokenLanguages();
    for (const lang of langs) {
      const media = await loadMedia(lang);
      if (!S.languages.includes(lang) || rows.querySelector('[data-lang="' + CSS.escape(lang) + '"]')) continue;
      const row = document.createElement("div");
      row.className = "tts-variant"; row.dataset.lang = lang;
      const label = document.createElement("label");
      const name = document.createElement("span"); name.textContent = langName(lang);
      const sel = document.createElement("select");
      const add = (value, text) => {
        const o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o);
      };
      add("", t("v_none"));
      for (const m of media) add("media:" + m.id, m.title || m.filename || m.id);
      if (spoken.has(lang)) add("text", t("v_text"));
      label.append(name, sel);
      const area = document.createElement("textarea");
      area.rows = 3; area.className = "hidden"; area.placeholder = t("v_text_placeholder", { lang: langName(lang) });
      ["keydown", "keyup"].forEach((n) => area.addEventListener(n, (e) => e.stopPropagation()));
      const note = document.createElement("p");
      note.className = "tts-variant-note"; note.textContent = media.length ? "" : t("v_no_media", { lang: langName(lang) });
      sel.addEventListener("change", () => { area.classList.toggle("hidden", sel.value !== "text"); syncVariants(); });
      area.addEventListener("input", syncVariants);
      row.append(label, area, note);
      rows.appendChild(row);
      const k = keep[lang];
      if (k && [...sel.options].some((o) => o.value === k.choice)) {
        sel.value = k.choice; area.value = k.text; area.classList.toggle("hidden", sel.value !== "text");
      }
    }
    syncVariants();
  }
  // the chosen variants, in the zones' language order, mirrored in window.loaText.variants
  function syncVariants() {
    const out = [];
    $("tts-variant-rows").querySelectorAll(".tts-variant").forEach((row) => {
      const v = row.querySelector("select").value, lang = row.dataset.lang;
      if (v.startsWith("media:")) out.push({ language: lang, source: { kind: "media", id: v.slice(6) } });
      else if (v === "text") {
        // read by an engine that reads this language, in its own voice
        const e = ((S.voices && S.voices.engines) || []).find((x) => (x.language || "vi") === lang);
        const src = { kind: "tts", text: row.querySelector("textarea").value };
        if (e) { src.engine = e.name; src.voice = e.default_voice; }
        out.push({ language: lang, source: src });
      }
    });
    S.variants = out;
    return out;
  }
  function source() {
    const src = { kind: "tts", text: $("tts-text").value, rate: parseFloat($("tts-rate").value) || 1.0 };
    if ($("tts-voice").value) {
      const [engine, voice] = JSON.parse($("tts-voice").value);
      src.engine = engine; src.voice = voice;
    }
    return src;
  }

  // ------------------------------------------------------------------ preview
  async function preview() {
    const src = source();
    if (!src.text.trim()) { show("warn", t("empty")); return; }
    S.phase = "previewing"; S.error = S.errorCode = null;
    show("info", t("previewing"));
    $("tts-preview").disabled = true;
    const body = { text: src.text, rate: src.rate };
    if (src.voice) { body.voice = src.voice; body.engine = src.engine; }
    const r = await api("POST", "/tts/preview", body);
    $("tts-preview").disabled = false;
    if (r.status !== 200 || !r.data) { S.phase = "error"; fail(r); return; }
    const d = r.data;
    S.words = d.words; S.previewSeconds = d.duration_s || 0;
    $("tts-words").textContent = d.words;
    $("tts-words-box").classList.remove("hidden");
    const bin = atob(d.audio || "");
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    S.previewBytes = bytes.length;
    const audio = $("tts-audio");
    if (audio.dataset.url) URL.revokeObjectURL(audio.dataset.url);
    audio.dataset.url = URL.createObjectURL(new Blob([bytes], { type: "audio/wav" }));
    audio.src = audio.dataset.url;
    audio.classList.remove("hidden");
    previewedText = src.text;
    S.phase = "previewed";
    show("info", t("previewed", { s: (d.duration_s || 0).toLocaleString(lang()) }) + (d.truncated ? t("preview_part") : ""));
    audio.play().catch(() => { /* the official presses play */ });
  }

  // ------------------------------------------------------------------ send, follow, stop
  async function send() {
    const src = source();
    if (!src.text.trim()) { show("warn", t("empty")); return; }
    const zones = selectedZones();
    if (!zones.length) { show("warn", t("pick_zone")); return; }
    const extra = syncVariants();
    const blank = extra.find((v) => v.source.kind === "tts" && !v.source.text.trim());
    if (blank) { show("warn", t("v_empty", { lang: langName(blank.language) })); return; }
    S.phase = "sending"; S.error = S.errorCode = null;
    show("info", t("sending"));
    $("tts-send").disabled = true;
    // with variants the typed text is the Vietnamese one, first (it stands for `source`)
    const body = extra.length
      ? { zones, level: selectedLevel(), variants: [{ language: "vi", source: src }, ...extra] }
      : { zones, level: selectedLevel(), source: src };
    S.request = body;
    const r = await api("POST", "/broadcasts", body);
    $("tts-send").disabled = false;
    if (r.status !== 201 || !r.data) { S.phase = "error"; fail(r); return; }
    S.broadcast = r.data.id; S.state = r.data;
    // zones that air different languages are one engine broadcast per group: follow and stop all
    S.broadcasts = (r.data.source && r.data.source.variant_broadcasts) || [r.data.id];
    S.phase = "on_air";
    $("tts-stop").classList.remove("hidden");
    renderState();
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = setInterval(follow, 1000);
  }
  function renderState() {
    const b = S.state || {};
    const zones = zoneList(b.on_air_zones && b.on_air_zones.length ? b.on_air_zones : b.reached_zones);
    if (b.state === "finished") show("info", t("finished"));
    else if (b.state === "stopped") show("warn", t("stopped"));
    else if (b.state === "refused" || b.error) show("error", t("failed_state", { why: b.error || b.reason || b.state }));
    else if (b.state === "playing") show("info", t("playing", { zones }));
    else show("info", t("queued", { zones }));
  }
  async function follow() {
    if (!S.broadcast) return;
    const r = await api("GET", "/broadcasts/" + encodeURIComponent(S.broadcast));
    if (r.status !== 200 || !r.data) return;
    S.state = r.data;
    if (S.broadcasts.length > 1) {   // every group's zones, and the group still playing
      const all = await Promise.all(S.broadcasts.map((id) => api("GET", "/broadcasts/" + encodeURIComponent(id))));
      const ds = all.filter((x) => x.status === 200 && x.data).map((x) => x.data);
      const live = ds.find((d) => !d.ended && !["finished", "stopped", "refused", "interrupted"].includes(d.state));
      S.state = Object.assign({}, live || r.data, {
        reached_zones: ds.flatMap((d) => d.reached_zones || []),
        on_air_zones: ds.flatMap((d) => d.on_air_zones || []),
      });
      if (live) { r.data.ended = false; r.data.state = live.state; }
    }
    renderState();
    if (r.data.ended || ["finished", "stopped", "refused", "interrupted"].includes(r.data.state)) {
      clearInterval(pollTimer); pollTimer = null;
      S.phase = "ended"; S.broadcast = null;
      $("tts-stop").classList.add("hidden");
    }
  }
  async function stop() {
    if (!S.broadcast) return;
    const ids = S.broadcasts.length ? S.broadcasts : [S.broadcast];
    const rs = await Promise.all(ids.map((id) => api("DELETE", "/broadcasts/" + encodeURIComponent(id))));
    const bad = rs.find((r) => r.status !== 200 && r.status !== 409 && r.status !== 404);
    if (bad) { fail(bad); return; }
    await follow();
  }

  // ------------------------------------------------------------------ wiring
  const area = $("tts-text");
  // typing a space here is text, not the page's hold-to-talk key (live.js listens on document)
  ["keydown", "keyup"].forEach((n) => area.addEventListener(n, (e) => e.stopPropagation()));
  area.addEventListener("input", () => {
    renderCount();
    if (previewedText !== null && area.value !== previewedText && S.phase === "previewed") {
      S.phase = "idle"; show("warn", t("stale"));
    }
  });
  $("tts-preview").addEventListener("click", preview);
  // the ticked zones decide which languages are offered
  $("zones").addEventListener("change", () => renderVariants());
  ["zones-all", "zones-none"].forEach((id) => { const b = $(id); if (b) b.addEventListener("click", () => setTimeout(renderVariants, 0)); });
  $("tts-send").addEventListener("click", send);
  $("tts-stop").addEventListener("click", stop);
  card.addEventListener("toggle", () => { if (card.open) loadVoices(); });
  new MutationObserver(applyLang).observe(document.documentElement, { attributes: true, attributeFilter: ["lang"] });
  const console_ = $("console");
  if (console_) {
    const seen = () => { if (!console_.classList.contains("hidden")) loadVoices(); };
    new MutationObserver(seen).observe(console_, { attributes: true, attributeFilter: ["class"] });
    seen();
  }
  applyLang();
})();
