"use strict";
(() => {
  const T = {
    vi: { title: "Lịch phát", zone: "Vùng", ics: "Xuất lịch (.ics)", new: "Lịch mới", edit: "Sửa lịch",
          name: "Tên", text: "Nội dung đọc (TTS)", media: "hoặc mã tệp", start: "Bắt đầu",
          repeat: "Lặp (RRULE)", level: "Mức", save: "Lưu", delete: "Xoá", background: "nền",
          normal: "thông thường", priority: "ưu tiên", emergency: "khẩn cấp", saved: "Đã lưu",
          deleted: "Đã xoá", conflict: "Trùng với", wins: "thắng", login: "Cần đăng nhập (trang /dashboard)" },
    en: { title: "Schedule", zone: "Zone", ics: "Export (.ics)", new: "New schedule", edit: "Edit schedule",
          name: "Title", text: "Text read aloud (TTS)", media: "or media id", start: "Start",
          repeat: "Repeat (RRULE)", level: "Level", save: "Save", delete: "Delete", background: "background",
          normal: "normal", priority: "priority", emergency: "emergency", saved: "Saved",
          deleted: "Deleted", conflict: "Overlaps", wins: "wins", login: "Please log in (on /dashboard)" },
  };
  const $ = (id) => document.getElementById(id);
  let lang = new URLSearchParams(location.search).get("lang") || localStorage.getItem("loa.lang") || "vi";
  if (!T[lang]) lang = "vi";
  const t = (k) => (T[lang] && T[lang][k]) || T.vi[k] || k;
  const S = { zone: null, weekStart: null, items: [], schedules: {} };
  window.loaSchedule = S;

  function applyLang() {
    document.documentElement.lang = lang;
    $("lang").textContent = lang === "vi" ? "EN" : "VI";
    document.querySelectorAll("[data-i18n]").forEach((e) => { e.textContent = t(e.dataset.i18n); });
    render();
  }
  $("lang").addEventListener("click", () => {
    lang = lang === "vi" ? "en" : "vi"; localStorage.setItem("loa.lang", lang); applyLang();
  });

  function notice(msg) { const n = $("notice"); n.textContent = msg || ""; n.classList.toggle("hidden", !msg); }
  async function api(method, path, body) {
    const r = await fetch("/api/v1" + path, { method, credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((data.error && (data.error.code + ": " + data.error.message)) || r.status);
    return data;
  }
  function monday(d) { const x = new Date(d); x.setHours(0, 0, 0, 0); x.setDate(x.getDate() - ((x.getDay() + 6) % 7)); return x; }
  const fmtDay = (d) => d.toLocaleDateString(lang === "vi" ? "vi-VN" : "en-GB", { weekday: "short", day: "numeric", month: "numeric" });
  const fmtTime = (d) => d.toLocaleTimeString(lang === "vi" ? "vi-VN" : "en-GB", { hour: "2-digit", minute: "2-digit", hour12: false });

  function render() {
    const g = $("grid"); g.textContent = "";
    if (!S.weekStart) return;
    const end = new Date(S.weekStart.getTime() + 7 * 864e5);
    $("week").textContent = fmtDay(S.weekStart) + " – " + fmtDay(new Date(end - 1));
    for (let i = 0; i < 7; i++) {
      const day = new Date(S.weekStart.getTime() + i * 864e5);
      const box = document.createElement("div"); box.className = "day";
      const h = document.createElement("h3"); h.textContent = fmtDay(day); box.appendChild(h);
      for (const it of S.items) {
        const st = new Date(it.start);
        if (st < day || st >= new Date(day.getTime() + 864e5)) continue;
        const el = document.createElement("div");
        el.className = "item lv-" + it.level; el.dataset.schedule = it.schedule; el.dataset.level = it.level;
        el.textContent = fmtTime(st) + " " + it.title;
        el.title = t(it.level);
        el.addEventListener("click", () => edit(it.schedule));
        box.appendChild(el);
      }
      g.appendChild(box);
    }
  }
  async function load() {
    const zone = S.zone ? "zone=" + encodeURIComponent(S.zone) + "&" : "";
    const from = S.weekStart.toISOString(), to = new Date(S.weekStart.getTime() + 7 * 864e5).toISOString();
    const q = zone + "from=" + encodeURIComponent(from) + "&to=" + encodeURIComponent(to);
    $("ics").href = "/api/v1/schedule.ics?" + q;
    try {
      const [lst, sch] = await Promise.all([api("GET", "/schedule?" + q), api("GET", "/schedules")]);
      S.items = lst.items; S.schedules = {};
      for (const s of sch.schedules) S.schedules[s.id] = s;
      notice("");
    } catch (e) { notice(String(e.message).startsWith("unauth") ? t("login") : e.message); S.items = []; }
    S.loaded = (S.loaded || 0) + 1;
    render();
  }
  function localInput(iso) {
    const d = new Date(iso); const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
  }
  function edit(id) {
    const s = S.schedules[id]; if (!s) return;
    $("sid").value = id; $("form-title").textContent = t("edit");
    $("f-title").value = s.title; $("f-rrule").value = s.rrule || ""; $("f-level").value = s.level;
    $("f-start").value = localInput(s.start);
    $("f-text").value = (s.source && s.source.text) || ""; $("f-media").value = (s.source && s.source.id) || "";
    $("delete").classList.remove("hidden");
  }
  function offsetIso(local) {
    const d = new Date(local); const off = -d.getTimezoneOffset(); const sign = off >= 0 ? "+" : "-";
    const p = (n) => String(Math.floor(Math.abs(n))).padStart(2, "0");
    return local + ":00" + sign + p(off / 60) + ":" + p(off % 60);
  }
  $("form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = $("sid").value;
    const source = $("f-media").value ? { kind: "media", id: $("f-media").value }
      : { kind: "tts", text: $("f-text").value };
    const body = { title: $("f-title").value, level: $("f-level").value, start: offsetIso($("f-start").value),
                   rrule: $("f-rrule").value || null, source };
    if (!id) body.zones = [S.zone];
    try {
      const r = id ? await api("PATCH", "/schedules/" + id, body) : await api("POST", "/schedules", body);
      const ul = $("conflicts"); ul.textContent = "";
      for (const c of r.conflicts || []) {
        const li = document.createElement("li");
        li.textContent = `${t("conflict")} ${c.title || c.schedule} ${new Date(c.at).toLocaleString()} — ${c.winner === r.id ? (r.title) : (c.title || c.schedule)} ${t("wins")}`;
        ul.appendChild(li);
      }
      notice(t("saved")); S.lastSaved = r.id; await load();
    } catch (e) { notice(e.message); }
  });
  $("delete").addEventListener("click", async () => {
    try { await api("DELETE", "/schedules/" + $("sid").value); notice(t("deleted")); $("sid").value = "";
          $("delete").classList.add("hidden"); await load(); } catch (e) { notice(e.message); }
  });
  $("prev").addEventListener("click", () => { S.weekStart = new Date(S.weekStart - 7 * 864e5); load(); });
  $("next").addEventListener("click", () => { S.weekStart = new Date(S.weekStart.getTime() + 7 * 864e5); load(); });
  $("zone").addEventListener("change", () => { S.zone = $("zone").value; load(); });

  (async () => {
    S.weekStart = monday(new Date());
    try {
      const z = await api("GET", "/zones");
      const zones = z.zones || z;
      for (const zone of zones) { const o = document.createElement("option"); o.value = zone.id; o.textContent = zone.name || zone.id; $("zone").appendChild(o); }
      S.zone = (zones[0] && zones[0].id) || null;
    } catch (e) { notice(e.message); }
    applyLang(); await load(); S.ready = true;
  })();
})();
