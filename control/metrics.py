"""Prometheus metrics at /metrics, read through the engine port when scraped (nothing on the
tick): `port.stats()` and the receiver registry."""
from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from streamer.port import EnginePort


class EngineCollector:
    def __init__(self, port: EnginePort, registry=None) -> None:
        self.port = port
        self.registry = registry

    def collect(self):
        st = self.port.stats()
        c = st.clock
        yield GaugeMetricFamily("loa_encoders_active", "Opus encoders running (distinct programs)",
                                value=st.encoders_active)
        es = st.encoders
        yield GaugeMetricFamily("loa_encoders_planning_loss",
                                "Program encoders planning for packet loss (reported or assumed)",
                                value=es["planning_loss"])
        yield GaugeMetricFamily("loa_encoder_loss_percent_max",
                                "Highest packet loss (%) any program encoder plans for",
                                value=es["max_loss_perc"])
        yield GaugeMetricFamily("loa_broadcasts_active", "Active broadcasts", value=st.broadcasts_active)
        yield CounterMetricFamily("loa_ticks", "Engine ticks run", value=c["ticks"])
        yield CounterMetricFamily("loa_tick_late", "Ticks that started more than half a period late",
                                  value=c["late_ticks"])
        yield CounterMetricFamily("loa_tick_skipped", "Ticks skipped after a long stall",
                                  value=c["skipped_ticks"])
        yield CounterMetricFamily("loa_tick_overruns", "Ticks whose work took longer than 20 ms",
                                  value=c["tick_overruns"])
        yield GaugeMetricFamily("loa_tick_work_us", "Work time of the last tick (µs)",
                                value=c["last_tick_us"])
        f = st.fanout
        yield CounterMetricFamily("loa_packets_sent", "RTP packets sent", value=f.get("sent", 0))
        yield CounterMetricFamily("loa_packets_dropped", "RTP packets dropped (socket full)",
                                  value=f.get("dropped", 0))
        yield CounterMetricFamily("loa_send_errors", "RTP send errors", value=f.get("errors", 0))
        yield GaugeMetricFamily("loa_destinations", "RTP destinations", value=f.get("destinations", 0))
        reg = self.registry
        if reg is not None:
            online = GaugeMetricFamily("loa_receivers_online", "Registered receivers online",
                                       labels=["zone"])
            for zone, n in sorted(reg.online_by_zone().items()):
                online.add_metric([zone], n)
            yield online
            rx = reg.status()
            loss = GaugeMetricFamily("loa_receiver_loss_fraction",
                                     "Loss fraction last reported by each receiver",
                                     labels=["receiver", "zone"])
            for r in rx:
                lq = r.get("link") or {}
                if lq.get("fraction_lost") is not None:
                    loss.add_metric([r["id"], r.get("zone", "")], float(lq["fraction_lost"]))
            yield loss
            proto = CounterMetricFamily("loa_receiver_protocol",
                                        "Receiver protocol datagrams by outcome", labels=["outcome"])
            for k, v in sorted(reg.counters.items()):
                proto.add_metric([k], v)
            yield proto
            silent = GaugeMetricFamily("loa_receivers_not_playing",
                                       "Online receivers not playing, by zone and reason "
                                       "(auth_failed, no_media, no_reports)",
                                       labels=["zone", "reason"])
            for (zone, why), n in sorted(reg.not_playing_by_zone().items()):
                silent.add_metric([zone, why], n)
            yield silent
            auth = CounterMetricFamily("loa_receiver_auth_failures",
                                       "Media packets receivers reported failing SRTP "
                                       "authentication", labels=["zone"])
            for zone, n in sorted(reg.auth_failures_by_zone().items()):
                auth.add_metric([zone], n)
            yield auth


class AlertCollector:
    """Disaster alert intake (control/alerts/intake.py): messages received, refused by reason,
    duplicates, aired, logged; audio resources not used; feed failures (in total, and whether
    each feed's last poll worked)."""

    REFUSED = ("unsigned", "signature", "invalid", "area", "sender")

    def __init__(self, intake: Any) -> None:
        self.intake = intake

    def collect(self) -> Any:
        c = self.intake.counters
        yield CounterMetricFamily("loa_alerts_received", "CAP messages received (push and feeds)",
                                  value=c.get("received", 0))
        refused = CounterMetricFamily("loa_alerts_refused", "CAP messages refused, by reason",
                                      labels=["reason"])
        for reason in self.REFUSED:
            refused.add_metric([reason], c.get(f"refused_{reason}", 0))
        yield refused
        yield CounterMetricFamily("loa_alerts_duplicates", "CAP messages received again (no change)",
                                  value=c.get("duplicates", 0))
        yield CounterMetricFamily("loa_alerts_aired", "Alerts put on air (first airings)",
                                  value=c.get("aired", 0))
        logged = CounterMetricFamily("loa_alerts_not_aired",
                                     "Accepted messages that did not air, by outcome (test, "
                                     "exercise, draft, expired, cancel...)", labels=["outcome"])
        for k, v in sorted(c.items()):
            if k not in ("received", "duplicates", "aired", "feed_errors", "resource_errors") \
                    and not k.startswith("refused_"):
                logged.add_metric([k], v)
        yield logged
        yield CounterMetricFamily("loa_alert_resource_errors",
                                  "Alert audio resources not used (the text was read instead)",
                                  value=c.get("resource_errors", 0))
        yield CounterMetricFamily("loa_alert_feed_failures", "Failed polls of alert feeds",
                                  value=c.get("feed_errors", 0))
        up = GaugeMetricFamily("loa_alert_feed_up", "1 if the feed's last poll worked",
                               labels=["feed"])
        for f in self.intake.feeds.status():
            if f.get("ok") is not None:
                up.add_metric([str(f.get("id"))], 1 if f.get("ok") else 0)
        yield up
        yield GaugeMetricFamily("loa_alerts_active", "Alerts in force (airing or repeating)",
                                value=len(self.intake.book.active()))


class Metrics:
    """The exposition of /metrics: one collector registry per server."""

    def __init__(self, port: EnginePort, registry=None) -> None:
        self._registry = CollectorRegistry()
        self._registry.register(EngineCollector(port, registry))

    def register(self, collector) -> None:
        """Another part's collector (listener counts...), rendered with the engine's."""
        self._registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self._registry), CONTENT_TYPE_LATEST
