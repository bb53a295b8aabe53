"""Pull feeds: an Atom or RSS index whose entries link to CAP messages (as Google Public Alerts
and MeteoAlarm publish them), or a URL that returns one CAP message. Each is polled on its
interval with a conditional GET (ETag / Last-Modified), a timeout, and back-off on errors; a
failing feed is an event and a counter, never a crash. Every message goes through the same
intake as a push (signature against the registered authority included).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urljoin
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from control.alerts.cap import NS as CAP_NS
from control.alerts.config import AlertFeedConfig
from control.errors import DomainError

log = logging.getLogger("loa.alerts")

ATOM = "{http://www.w3.org/2005/Atom}"
MAX_INDEX_BYTES = 4 * 1024 * 1024
MAX_BACKOFF_S = 900.0


class FeedError(Exception):
    pass


def feed_links(data: bytes, base: str) -> list[str] | None:
    """The CAP links of an Atom/RSS index (absolute, in document order), or None when `data`
    is a CAP message itself. Pure; hostile XML raises FeedError."""
    try:
        root = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, ParseError, ValueError) as e:
        raise FeedError(f"not a readable feed: {type(e).__name__} {e}") from None
    if root.tag == f"{{{CAP_NS}}}alert":
        return None
    out: list[str] = []
    if root.tag == f"{ATOM}feed":
        for entry in root.findall(f"{ATOM}entry"):
            links = entry.findall(f"{ATOM}link")
            cap = [lk for lk in links if "cap" in (lk.get("type") or "")]
            pick = (cap or [lk for lk in links if lk.get("rel", "alternate") == "alternate"] or links)
            if pick and pick[0].get("href"):
                out.append(urljoin(base, pick[0].get("href", "")))
        return out
    if root.tag == "rss":
        for item in root.iter("item"):
            link = item.find("link")
            if link is not None and (link.text or "").strip():
                out.append(urljoin(base, (link.text or "").strip()))
        return out
    raise FeedError(f"neither an Atom/RSS index nor a CAP alert (root {root.tag[:80]!r})")


class FeedPoller:
    def __init__(self, cfg: AlertFeedConfig, intake: Any) -> None:
        self.cfg = cfg
        self.id = cfg.id or cfg.url
        self.intake = intake
        self.etag: str | None = None
        self.modified: str | None = None
        self.failures = 0
        self.seen: OrderedDict[str, str] = OrderedDict()  # message URL -> its ETag/length
        self.status: dict[str, Any] = {"id": self.id, "url": cfg.url, "ok": None, "error": None,
                                       "last_poll": None, "failures": 0, "messages": 0}

    def delay(self) -> float:
        if not self.failures:
            return self.cfg.interval_s
        return min(self.cfg.interval_s * (2 ** min(self.failures, 10)), MAX_BACKOFF_S)

    async def run(self, http: Any) -> None:
        while True:
            if self.intake.leader():   # several nodes: the lease holder polls (issue 19)
                await self.poll(http)
            await asyncio.sleep(self.delay())

    async def poll(self, http: Any) -> None:
        self.status["last_poll"] = time.time()
        try:
            await self._poll(http)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.failures += 1
            msg = f"{type(e).__name__}: {e}"[:300]
            self.status.update(ok=False, error=msg, failures=self.failures)
            self.intake.counters["feed_errors"] += 1
            self.intake.publish({"type": "alert.feed_failed", "feed": self.id, "error": msg,
                                 "retry_in_s": round(self.delay(), 1)})
            log.warning("alert feed %s failed (%d in a row): %s", self.id, self.failures, msg)
        else:
            self.failures = 0
            self.status.update(ok=True, error=None, failures=0)

    async def _get(self, http: Any, url: str, limit: int, conditional: bool
                   ) -> tuple[int, bytes, dict[str, str]]:
        import aiohttp
        headers = {"Accept": "application/cap+xml, application/atom+xml, application/rss+xml, "
                             "application/xml;q=0.9"}
        if conditional and self.etag:
            headers["If-None-Match"] = self.etag
        if conditional and self.modified:
            headers["If-Modified-Since"] = self.modified
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        async with http.get(url, headers=headers, timeout=timeout, allow_redirects=False) as r:
            if r.status == 304:
                return 304, b"", {}
            if r.status != 200:
                raise FeedError(f"{url[:200]}: HTTP {r.status}")
            body = await r.content.read(limit + 1)
            if len(body) > limit:
                raise FeedError(f"{url[:200]}: larger than {limit} bytes")
            return 200, body, {k.lower(): v for k, v in r.headers.items()}

    async def _poll(self, http: Any) -> None:
        status, body, hdrs = await self._get(http, self.cfg.url, MAX_INDEX_BYTES, True)
        if status == 304:
            return
        self.etag, self.modified = hdrs.get("etag"), hdrs.get("last-modified")
        links = feed_links(body, self.cfg.url)
        if links is None:
            await self._ingest(body, self.cfg.url)
            return
        for url in links:
            if url in self.seen:
                continue
            _, msg, _ = await self._get(http, url, self.intake.max_bytes, False)
            await self._ingest(msg, url)
            self.seen[url] = ""
            while len(self.seen) > 5000:
                self.seen.popitem(last=False)

    async def _ingest(self, data: bytes, url: str) -> None:
        self.status["messages"] += 1
        try:
            await self.intake.ingest(data, f"feed:{self.id}", f"feed:{self.id}",
                                     authority=self.cfg.authority)
        except DomainError as e:  # refused: an event (published by the intake) and the audit
            await self.intake.db.audit(actor=f"feed:{self.id}", role="feed", action="alerts.pull",
                                       method="GET", target=url[:300], result="refused",
                                       status=0, detail={"code": e.code, "message": e.message[:300]})


class Feeds:
    """Every configured feed, each in its own task, sharing one HTTP client session."""

    def __init__(self, intake: Any, feeds: list[AlertFeedConfig]) -> None:
        self.pollers = [FeedPoller(f, intake) for f in feeds]
        self._tasks: list[asyncio.Task] = []
        self._http: Any = None

    async def start(self) -> None:
        if not self.pollers:
            return
        import aiohttp
        self._http = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(p.run(self._http), name=f"loa-alert-feed-{p.id}")
                       for p in self.pollers]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    def status(self) -> list[dict[str, Any]]:
        return [dict(p.status) for p in self.pollers]
