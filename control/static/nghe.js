// The listening page: the zone's live stream (Ogg/Opus; HLS where Ogg does not play, e.g.
// Safari on iPhone), what is on air, the next items and the replays. Refreshes every 5 s.
(function () {
  "use strict";
  const zone = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
  const $ = (id) => document.getElementById(id);
  const player = $("player");
  const oggOk = player.canPlayType('audio/ogg; codecs="opus"') !== "";
  const src = oggOk ? "/listen/" + encodeURIComponent(zone) + ".ogg"
                    : "/listen/" + encodeURIComponent(zone) + "/index.m3u8";

  $("play").addEventListener("click", () => {
    if (player.paused) {
      player.src = src + (oggOk ? "?t=" + Date.now() : "");
      player.play().catch(() => {});
      $("play").textContent = "■ Dừng";
    } else {
      player.pause();
      player.removeAttribute("src");
      player.load();
      $("play").textContent = "▶ Nghe trực tiếp";
    }
  });

  function li(text, href) {
    const el = document.createElement("li");
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      el.appendChild(a);
    } else {
      el.textContent = text;
    }
    return el;
  }

  function fmtTime(iso) {
    try {
      return new Date(iso).toLocaleString("vi-VN", { timeZone: "Asia/Ho_Chi_Minh",
        hour: "2-digit", minute: "2-digit", day: "2-digit", month: "2-digit" });
    } catch (e) { return iso; }
  }

  function refresh() {
    fetch("/api/v1/listen/" + encodeURIComponent(zone), { credentials: "same-origin" })
      .then((r) => r.json().then((j) => ({ ok: r.ok, j })))
      .then(({ ok, j }) => {
        if (!ok) {
          $("error").textContent = (j.error && j.error.message) || "Không xem được khu vực này";
          $("status").textContent = "Cần đăng nhập";
          return;
        }
        $("zone").textContent = "Nghe đài: " + j.name;
        document.title = "Nghe đài " + j.name;
        $("listeners").textContent = j.listeners.current + " người đang nghe";
        const np = j.now_playing;
        if (np) {
          $("status").textContent = "● Đang phát";
          $("status").className = "";
          $("title").textContent = np.title;
          $("text").textContent = np.text && np.text !== np.title ? np.text : "";
        } else {
          $("status").textContent = "Hiện không có bản tin";
          $("status").className = "idle";
          $("title").textContent = "";
          $("text").textContent = "";
        }
        const next = $("next");
        next.textContent = "";
        if (!j.playing_next || !j.playing_next.length) next.appendChild(li("Chưa có lịch"));
        for (const it of (j.playing_next || []).slice(0, 5)) {
          next.appendChild(li(fmtTime(it.at || it.start) + " · " + (it.title || "")));
        }
      }).catch(() => {});
    fetch("/api/v1/archive?limit=20&zone=" + encodeURIComponent(zone), { credentials: "same-origin" })
      .then((r) => r.ok ? r.json() : null).then((j) => {
        if (!j) return;
        const ul = $("replays");
        ul.textContent = "";
        if (!j.entries.length) ul.appendChild(li("Chưa có bản tin"));
        for (const e of j.entries) {
          ul.appendChild(li(fmtTime(e.started_at) + " · " + e.title + " (" +
                            Math.round(e.duration_s) + " giây)", e.url));
        }
      }).catch(() => {});
  }
  refresh();
  setInterval(refresh, 5000);
})();
