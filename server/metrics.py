"""Prometheus metrics of one service instance (its own registry, so several apps can share a process)."""
from __future__ import annotations

import threading
from typing import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("jepa_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram("jepa_http_request_seconds", "HTTP request latency",
                                         ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.planning_seconds = Histogram("jepa_planning_seconds", "time to plan one action (encode + search)",
                                          ["source"], buckets=_LATENCY_BUCKETS, registry=r)
        self.energy = Histogram("jepa_plan_energy", "energy of the chosen plan",
                                buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0), registry=r)
        self.actions = Counter("jepa_actions", "actions planned", ["source"], registry=r)
        self.plan_failures = Counter("jepa_plan_failures", "planning jobs that raised", ["source"], registry=r)
        self.act_timeouts = Counter("jepa_act_timeouts", "acts given up at their deadline (a late plan is discarded)",
                                    ["source"], registry=r)
        self.bridge = _BridgeCollector()
        r.register(self.bridge)
        self.worker_queue = Gauge("jepa_worker_queue_depth", "model jobs queued or running", registry=r)
        self.model_ready = Gauge("jepa_model_ready", "1 once the model has loaded", registry=r)
        self.active_sessions = Gauge("jepa_active_sessions", "sessions not stopped", registry=r)

    def count_stale_http(self) -> None:
        self.bridge.count_stale_http()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _BridgeCollector(Collector):
    """Stale drops from both front doors under one metric, and the bridge's own counters, read at
    scrape time from `BridgeService.stats()` (the bridge keeps them; we never copy them twice)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stale_http = 0
        self.read_stats: Callable[[], Mapping[str, int]] | None = None

    def count_stale_http(self) -> None:
        with self._lock:
            self._stale_http += 1

    def collect(self) -> Iterator[Metric]:
        stats = dict(self.read_stats()) if self.read_stats is not None else {}
        stale = CounterMetricFamily("jepa_stale_observations_dropped",
                                    "observations dropped as stale or out of order", labels=["source"])
        with self._lock:
            stale.add_metric(["http"], self._stale_http)
        stale.add_metric(["bridge"], stats.pop("observations_dropped_stale", 0))
        yield stale
        connections = GaugeMetricFamily("jepa_bridge_connections", "arms known to the ZeroMQ bridge")
        connections.add_metric([], stats.pop("robots_active", 0))
        yield connections
        events = CounterMetricFamily("jepa_bridge_events", "ZeroMQ bridge counters", labels=["kind"])
        for kind, value in sorted(stats.items()):
            events.add_metric([kind], value)
        yield events
