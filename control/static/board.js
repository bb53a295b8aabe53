// The e-board: shows a zone's board state (/api/v1/boards/{zone}) and follows it over SSE;
// it reconnects on its own (EventSource retries; a silent stream is reopened after 40 s).
(function () {
  "use strict";
  const zone = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
  const api = "/api/v1/boards/" + encodeURIComponent(zone);
  const $ = (id) => document.getElementById(id);
  let lastSeen = Date.now();
  let es = null;

  function render(st) {
    lastSeen = Date.now();
    $("zone").textContent = st.name || zone;
    document.title = "Bảng tin " + (st.name || zone);
    const b = st.banner;
    if (b) {
      $("banner").hidden = false;
      $("banner").style.background = b.colour;
      $("banner-level").textContent = b.risk_level ? "CẤP ĐỘ " + b.risk_level : "KHẨN CẤP";
      $("banner-text").textContent = b.text || b.title || "";
    } else {
      $("banner").hidden = true;
    }
    if (st.on_air) {
      $("status").textContent = "● Đang phát";
      $("status").className = "";
      $("title").textContent = st.on_air.title || "";
      $("text").textContent = st.text || "";
    } else {
      $("status").textContent = "Không có bản tin đang phát";
      $("status").className = "idle";
      $("title").textContent = "";
      $("text").textContent = "";
    }
    const ul = $("next");
    ul.textContent = "";
    for (const it of (st.next || []).slice(0, 3)) {
      const li = document.createElement("li");
      li.textContent = (it.local_start || it.at || it.start || "").slice(11, 16) + " " + (it.title || "");
      ul.appendChild(li);
    }
  }

  function fetchOnce() {
    fetch(api, { credentials: "same-origin" }).then((r) => r.ok ? r.json() : null)
      .then((st) => { if (st) render(st); }).catch(() => {});
  }

  function connect() {
    if (es) es.close();
    es = new EventSource(api + "/events");
    es.addEventListener("board", (e) => { try { render(JSON.parse(e.data)); } catch (x) {} });
    es.addEventListener("ping", () => { lastSeen = Date.now(); });
    es.onopen = () => { lastSeen = Date.now(); };
  }

  function tick() {
    const d = new Date();
    $("clock").textContent = d.toLocaleTimeString("vi-VN", { hour: "2-digit", minute: "2-digit" });
    if (Date.now() - lastSeen > 40000) { lastSeen = Date.now(); fetchOnce(); connect(); }
  }
  fetchOnce();
  connect();
  tick();
  setInterval(tick, 1000);
})();
