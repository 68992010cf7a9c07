"""What /metrics shows: every metric declared with runs.metrics, from the Redis hash where every
process records them, and the scrape-time gauges, read now. A source that fails (Redis, the
database, the broker) leaves its metrics out and says so in relay_metrics_source_up, so a scrape
answers whatever is down."""

import logging
import math

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from runs import metrics

log = logging.getLogger(__name__)


class RelayCollector(Collector):
    def collect(self):
        up = {}
        try:
            stored = metrics.stored()
            up["redis"] = True
        except Exception as exc:
            log.warning("metrics: could not read the recorded metrics: %s", exc)
            stored = None
            up["redis"] = False
        for metric in sorted(metrics.catalogue(), key=lambda m: m.name):
            if metric.read is not None:
                family = self._read(metric, up)
            elif stored is not None:
                family = _family(metric, stored.get(metric.name, {}))
            else:
                family = None
            if family is not None:
                yield family
        sources = GaugeMetricFamily(
            "relay_metrics_source_up",
            "Whether /metrics could read each of its sources (1) or left its metrics out (0)",
            labels=("source",),
        )
        for source, ok in sorted(up.items()):
            sources.add_metric((source,), int(ok))
        yield sources

    def _read(self, metric, up):
        try:
            value = metric.read()
        except Exception as exc:
            log.warning("metrics: could not read %s: %s", metric.name, exc)
            up[metric.source] = False
            return None
        up.setdefault(metric.source, True)
        if value is None:  # nothing to say (e.g. queue lengths on a broker other than Redis)
            return None
        family = GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
        if not isinstance(value, dict):
            value = {(): value}
        for values, number in sorted(value.items()):
            family.add_metric(tuple(str(v) for v in values), number)
        return family


def _family(metric, samples):
    """The family of `metric` from its stored samples: {(part, label values): number}."""
    if metric.type == "counter":
        family = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
        if not metric.labels and not samples:
            samples = {("", ()): 0}  # a counter with no labels starts at 0, for rate()
        for (_, values), number in sorted(samples.items()):
            family.add_metric(values, number)
        return family
    if metric.type == "gauge":
        family = GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
        for (_, values), number in sorted(samples.items()):
            family.add_metric(values, number)
        return family
    family = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
    bounds = [float(b) for b in metric.buckets] + [math.inf]
    series = {}
    for (part, values), number in samples.items():
        series.setdefault(values, {})[part] = number
    for values, parts in sorted(series.items()):
        cumulative, buckets = 0, []
        for bound in bounds:
            cumulative += parts.get(f"le={bound!r}", 0)
            buckets.append((floatToGoString(bound), cumulative))
        # +Inf is the count: the two are incremented together, so they agree
        buckets[-1] = ("+Inf", parts.get("count", cumulative))
        family.add_metric(values, buckets, parts.get("sum", 0))
    return family


registry = CollectorRegistry(auto_describe=False)
registry.register(RelayCollector())
