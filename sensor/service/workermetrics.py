"""The workers' metrics as the sensor's, for the supervisor's Prometheus
endpoint (``run --workers N --metrics ADDR:PORT``).

Each worker answers ``metrics`` on its private control socket with the
samples of its own counters (sensor.service.metrics.Sample: its userland's;
the kernel's are read once, by the supervisor). ``WorkerMetrics.combine``
makes one sample per metric name and labels of them, with the names and
labels a single-process sensor exports, so a dashboard or an alert reads
both alike:

- counters are summed, histograms bucket by bucket (their sums too);
- gauges combine as their field says (sensor.counters.COMBINE): summed
  (flows, hosts), the largest (rules loaded, the fullest ring, uptime) or the
  smallest (Redis up);
- a sum of counters must not fall, or Prometheus takes it for a reset and
  ``rate()`` jumps: a worker that does not answer a scrape counts with its
  last answer's counters (its gauges are left out), and when a worker was
  started again (another pid) the counters its previous process had reached
  stay in the sums.

``smtp_sensor_workers_up`` says how many workers answered the scrape,
``smtp_sensor_worker_up{worker}`` which.
"""

from __future__ import annotations

import threading

from sensor.service.metrics import PREFIX, Sample

__all__ = ["WorkerMetrics"]

_MONOTONIC = ("counter", "histogram")


def _key(sample: Sample) -> tuple:
    return sample.name, tuple(sample.label_values)


def _add(total: Sample | None, more: Sample) -> Sample:
    """Two samples of one counter or histogram, summed."""
    if total is None or total.value is None:
        return more
    if more.value is None:
        return total
    if more.kind == "histogram":
        counts = dict((le, n) for le, n in total.value["buckets"])
        for le, n in more.value["buckets"]:
            counts[le] = counts.get(le, 0) + n
        value = {"buckets": [[le, n] for le, n in counts.items()], "sum": total.value["sum"] + more.value["sum"]}
    else:
        value = total.value + more.value
    return total._replace(value=value)


class WorkerMetrics:
    """What the supervisor keeps between scrapes: each worker's last answer
    (its pid, its samples) and the counters of worker processes that ended."""

    def __init__(self):
        self._last: dict[int, tuple[int, dict]] = {}    # worker -> (pid, {key: Sample})
        self._retired: dict[tuple, Sample] = {}          # key -> counters summed over ended processes
        self._lock = threading.Lock()                    # scrapes may come in parallel

    def combine(self, answers: dict[int, dict], workers: int) -> list[Sample]:
        """The sensor's samples from ``answers``, {worker: its ``metrics``
        reply, ``{"pid": ..., "samples": [...]}``}, of the ``workers``
        configured (those missing did not answer)."""
        with self._lock:
            for worker, answer in answers.items():
                found = {}
                for row in answer["samples"]:
                    sample = Sample(*row)
                    found[_key(sample)] = sample
                pid = answer["pid"]
                before = self._last.get(worker)
                if before is not None and before[0] != pid:     # started again: keep what the old one counted
                    for key, sample in before[1].items():
                        if sample.kind in _MONOTONIC:
                            self._retired[key] = _add(self._retired.get(key), sample)
                self._last[worker] = (pid, found)
            monotonic: dict[tuple, Sample] = dict(self._retired)
            gauges: dict[tuple, list[Sample]] = {}
            for worker, (_, found) in self._last.items():
                for key, sample in found.items():
                    if sample.kind in _MONOTONIC:
                        monotonic[key] = _add(monotonic.get(key), sample)
                    elif worker in answers:
                        gauges.setdefault(key, []).append(sample)
        out = list(monotonic.values())
        for found in gauges.values():
            how = {"max": max, "min": min}.get(found[0].combine, sum)
            out.append(found[0]._replace(value=how(s.value for s in found)))
        out.append(Sample(PREFIX + "workers_up", "gauge",
                          "worker processes that answered this scrape (the others' gauges are left out, "
                          "their counters are those of their last answer)", (), (), len(answers)))
        out += [Sample(PREFIX + "worker_up", "gauge", "1 if the worker answered this scrape, else 0",
                       ("worker",), (str(w),), int(w in answers)) for w in range(workers)]
        return out
