"""The auth service's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from tessera_verify.http_metrics import ServiceMetrics


class AuthMetrics(ServiceMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry or CollectorRegistry())
        self.logins = Counter(
            "tessera_logins_total",
            "Login attempts by outcome",
            ("outcome",),
            registry=self.registry,
        )
        self.refreshes = Counter(
            "tessera_refreshes_total",
            "Refresh-token grants by outcome",
            ("outcome",),
            registry=self.registry,
        )
        self.tokens_issued = Counter(
            "tessera_tokens_issued_total",
            "Credentials issued by kind",
            ("kind",),
            registry=self.registry,
        )
        self.audit_dropped = Counter(
            "tessera_audit_dropped_total",
            "Audit events dropped because PostgreSQL stayed unreachable and the queue was full",
            registry=self.registry,
        )
        self.revocations = Counter(
            "tessera_revocations_total",
            "Credentials revoked by kind",
            ("kind",),
            registry=self.registry,
        )
