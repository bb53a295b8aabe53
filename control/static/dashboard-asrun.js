// The dashboard's as-run section (issue 16): today's as-run log for a chosen zone, from
// GET /api/v1/reports/asrun (what aired, when, how long, at which level, what was preempted or
// missed and why), with a CSV link. Self-contained: its own strings, follows the page's
// language (html[lang]), all user text set with textContent.
(function () {
  "use strict";
  const W = {
    vi: { title: "Nhật ký phát hôm nay", zone: "Khu vực", time: "Giờ", what: "Nội dung",
          level: "Mức", aired: "Đã phát", state: "Kết quả", none: "Hôm nay chưa có gì phát ở khu vực này.",
          failed: "Không tải được nhật ký phát.", preempted: "bị ngắt",
          levels: { background: "nền", normal: "thường", priority: "ưu tiên", emergency: "khẩn cấp" } },
    en: { title: "Today's as-run log", zone: "Zone", time: "Time", what: "Item", level: "Level",
          aired: "Aired", state: "Outcome", none: "Nothing has aired in this zone today.",
          failed: "Could not load the as-run log.", preempted: "preempted",
          levels: { background: "background", normal: "normal", priority: "priority", emergency: "emergency" } },
  };
  const byId = (id) => document.getElementById(id);
  const lang = () => (document.documentElement.lang === "en" ? "en" : "vi");
  const w = (k) => W[lang()][k];
  let rows = [];
  let state = "idle";
  let retry = null;
  let seq = 0;

  function midnight() {
    const d = new Date(); d.setHours(0, 0, 0, 0); return d;
  }
  function range() {
    const q = new URLSearchParams({ from: midnight().toISOString(), to: new Date().toISOString() });
    const z = byId("ar-zone").value;
    if (z) q.set("zone", z);
    return q;
  }
  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "—" : d.toLocaleTimeString(lang() === "vi" ? "vi-VN" : "en-GB", { hour12: false });
  }
  function dur(s) {
    if (s === null || s === undefined) return "—";
    const m = Math.floor(s / 60), r = Math.round(s % 60);
    return m ? `${m}:${String(r).padStart(2, "0")}` : `${r} s`;
  }
  function labels() {
    byId("ar-title").textContent = w("title");
    byId("ar-zone").setAttribute("aria-label", w("zone"));
    ["time", "what", "level", "aired", "state"].forEach((k) => { byId("ar-h-" + k).textContent = w(k); });
    render();
  }
  function render() {
    const body = byId("ar-body");
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.className = "lv-" + (r.level || "normal");
      const cells = [clock(r.start), r.title || r.kind || "—",
                     (w("levels")[r.level] || r.level || "—"), dur(r.aired_s),
                     (r.state || "") + (r.preempted ? " · " + w("preempted") : "") +
                     (r.reason ? " — " + r.reason : "")];
      cells.forEach((c, i) => {
        const td = document.createElement("td");
        td.textContent = c;
        if (i === 3) td.className = "num";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    const empty = byId("ar-empty");
    empty.textContent = state === "failed" ? w("failed") : w("none");
    empty.classList.toggle("hidden", rows.length > 0 && state !== "failed");
    byId("ar-csv").href = "/api/v1/reports/asrun?" + range().toString() + "&format=csv";
  }
  async function zones() {
    const sel = byId("ar-zone");
    try {
      const r = await fetch("/api/v1/zones", { credentials: "same-origin" });
      if (!r.ok) return false;
      const j = await r.json();
      const list = (j.zones || j || []).map((z) => (typeof z === "string" ? { id: z } : z));
      const keep = sel.value || localStorage.getItem("loa.asrun.zone") || "";
      sel.replaceChildren();
      for (const z of list) {
        const o = document.createElement("option");
        o.value = z.id; o.textContent = z.name ? `${z.name} (${z.id})` : z.id;
        sel.appendChild(o);
      }
      if (keep && list.some((z) => z.id === keep)) sel.value = keep;
      return list.length > 0;
    } catch (e) { return false; }
  }
  async function load() {
    const dash = window.loaDash;
    if (!dash || !dash.user) {
      // signed out (the page asks who is signed in first): ask nothing, so no 401 in the
      // console; try again shortly
      if (!retry) retry = setTimeout(() => { retry = null; load(); }, 1500);
      return;
    }
    if (!byId("ar-zone").value && !(await zones())) {
      // not signed in yet (the page's login comes first): try again shortly
      if (!retry) retry = setTimeout(() => { retry = null; load(); }, 1500);
      return;
    }
    const mine = ++seq, zone = byId("ar-zone").value;
    let got = [], ok = "ok";
    try {
      const r = await fetch("/api/v1/reports/asrun?" + range().toString(), { credentials: "same-origin" });
      if (!r.ok) throw new Error(String(r.status));
      const j = await r.json();
      got = (j.rows || []).slice().sort((a, b) => String(b.start).localeCompare(String(a.start)));
    } catch (e) { ok = "failed"; }
    if (mine !== seq) return;   // a newer load (another zone) answers instead
    rows = got; state = ok;
    byId("asrun").dataset.state = state;
    byId("asrun").dataset.zone = zone;
    render();
  }
  function init() {
    if (!byId("asrun")) return;
    byId("ar-zone").addEventListener("change", () => {
      localStorage.setItem("loa.asrun.zone", byId("ar-zone").value); load();
    });
    new MutationObserver(labels).observe(document.documentElement, { attributes: true, attributeFilter: ["lang"] });
    labels();
    load();
    setInterval(() => { if (!document.hidden) load(); }, 30000);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
  window.loaAsrun = { load };
})();
