"""The operator's own Prometheus metrics (`deepdetect_operator_` prefix, docs/CONTRACTS.md).

One `OperatorMetrics` per operator, on its own `CollectorRegistry`, so tests and the benchmark can run
several operators in one process without duplicate-registration errors. State gauges (`service_phase`,
`rollout_state`) carry one series per possible value, 1 for the current one and 0 for the others, so a
transition never leaves a stale 1 behind; `forget` drops every series of a deleted CR.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "deepdetect_operator_"
PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed")
ROLLOUT_STATES = ("Progressing", "Complete", "Failed")
VALIDATION_STATES = ("Validating", "Passed", "Failed")
RESULTS = ("ok", "error", "degraded")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            f"{PREFIX}reconciles", "Reconciles by result (ok|error|degraded)", ["result"], registry=r
        )
        for result in RESULTS:
            self.reconciles.labels(result=result)
        self.duration = Histogram(
            f"{PREFIX}reconcile_duration_seconds",
            "Time of one reconcile of one DeepDetectService",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.managed = Gauge(
            f"{PREFIX}managed_services", "DeepDetectServices this operator manages", registry=r
        )
        self.phase = Gauge(
            f"{PREFIX}service_phase",
            "1 for the current phase of a service",
            ["namespace", "name", "phase"],
            registry=r,
        )
        self.rollout = Gauge(
            f"{PREFIX}rollout_state",
            "1 for the current checkpoint rollout state of a service",
            ["namespace", "name", "state"],
            registry=r,
        )
        self.checkpoint = Gauge(
            f"{PREFIX}checkpoint_resolved",
            "1 when the last checkpoint resolution succeeded",
            ["namespace", "name"],
            registry=r,
        )
        self.validation = Gauge(
            f"{PREFIX}validation_state",
            "1 for the state of the latest candidate checkpoint's validation Job (spec.rollout.validation)",
            ["namespace", "name", "state"],
            registry=r,
        )
        self._known: set[tuple[str, str]] = set()

    def observe(
        self,
        namespace: str,
        name: str,
        *,
        result: str,
        seconds: float,
        phase: str | None,
        rollout_state: str | None,
        checkpoint_ok: bool | None,
        validation_state: str | None = None,
    ) -> None:
        self.reconciles.labels(result=result).inc()
        self.duration.observe(seconds)
        self._known.add((namespace, name))
        self.managed.set(len(self._known))
        if phase is not None:
            for p in PHASES:
                self.phase.labels(namespace=namespace, name=name, phase=p).set(1 if p == phase else 0)
        if rollout_state:
            for s in ROLLOUT_STATES:
                self.rollout.labels(namespace=namespace, name=name, state=s).set(
                    1 if s == rollout_state else 0
                )
        if checkpoint_ok is not None:
            self.checkpoint.labels(namespace=namespace, name=name).set(1 if checkpoint_ok else 0)
        if validation_state:
            for s in VALIDATION_STATES:
                self.validation.labels(namespace=namespace, name=name, state=s).set(
                    1 if s == validation_state else 0)

    def forget(self, namespace: str, name: str) -> None:
        self._known.discard((namespace, name))
        self.managed.set(len(self._known))
        for p in PHASES:
            _remove(self.phase, namespace, name, p)
        for s in ROLLOUT_STATES:
            _remove(self.rollout, namespace, name, s)
        _remove(self.checkpoint, namespace, name)
        for s in VALIDATION_STATES:
            _remove(self.validation, namespace, name, s)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose `/metrics` on `addr:port` from a daemon thread (prometheus_client's own server)."""
        start_http_server(port, addr=addr, registry=self.registry)


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
