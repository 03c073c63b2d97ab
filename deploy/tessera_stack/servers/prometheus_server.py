"""Prometheus as a local process (the Debian package's server), for the stack's
optional monitoring (:mod:`tessera_stack.monitoring`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tessera_stack.processes import StackError, answers_200
from tessera_stack.servers.base import LOOPBACK, _ConfiguredServer


def find_prometheus() -> Path:
    """The Prometheus server binary (``prometheus`` on PATH, else /usr/bin/prometheus)."""
    for candidate in (shutil.which("prometheus"), "/usr/bin/prometheus"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise StackError(
        "prometheus not found: install the Debian package prometheus "
        "(deploy/scripts/bootstrap.sh --prometheus does; `make up MONITORING=1` runs it)"
    )


class PrometheusServer(_ConfiguredServer):
    """Prometheus on ``port`` with the configuration ``conf``, its time series under
    ``base_dir`` (one day of them)."""

    name = "prometheus"
    program = "prometheus"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the web UI and the HTTP API (``/api/v1/...``)."""
        return f"http://{LOOPBACK}:{self.port}"

    def remove_data(self) -> None:
        """Delete the time series; Prometheus must be stopped."""
        if self.running:
            raise StackError("stop prometheus before removing its data")
        shutil.rmtree(self._base_dir, ignore_errors=True)

    def _command(self, port: int) -> list[str]:
        return [
            str(find_prometheus()),
            f"--config.file={self._conf}",
            f"--storage.tsdb.path={self._base_dir}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--log.level=warn",
        ]

    def _ready(self, port: int) -> bool:
        return answers_200(port, "/-/ready", LOOPBACK)
