"""What the services export passes promtool, and the Grafana dashboard, the alert
rules and the Prometheus configuration in deploy/ ask only for what they export.

The exported names are read from real /metrics output of an auth service and a
resource replica (in-process, on real PostgreSQL and Redis), after traffic that
touches every family: no list of names is kept here. prometheus_client writes
the HELP and TYPE lines of a family even before it has a sample, so a family no
request has reached yet is still seen.

Helpers named without ``test_`` are shared with tests/test_deploy_live_stack.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ResourceFactory, register_and_login

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
COMPOSE_FILE = ROOT / "docker-compose.yml"

Client = TestClient[Any, Any]

# Grafana's own variables, replaced as Grafana would before the query is sent.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
# Series Prometheus writes itself for every target (not exported by a service).
SCRAPE_SERIES = frozenset({"up"})
PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "atan2",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not followed by "(" (a function or aggregation) and not part of a
# number or duration ("5m", "1e3").
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


# -- shared helpers -------------------------------------------------------------


def series_names(exposition: str) -> set[str]:
    """Every series name a /metrics text can produce, from its families and their types."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    }
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Strings, label matchers, ranges and label lists (``by (...)``,
    ``on (...)``...) are removed first; what is left that is neither a
    function, a keyword nor a number is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in PROMQL_KEYWORDS}


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it to Prometheus."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON in deploy/grafana/dashboards/, by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_queries() -> dict[str, str]:
    """Every dashboard query as Prometheus sees it, keyed ``file: panel title [refId]``."""
    queries: dict[str, str] = {}
    for name, dashboard in dashboards().items():
        for panel in _panels(dashboard):
            for target in panel.get("targets", []):
                key = f"{name}: {panel['title']} [{target['refId']}]"
                queries[key] = grafana_to_promql(target["expr"])
    return queries


def rule_queries() -> dict[str, str]:
    """Every alerting and recording rule expression in deploy/prometheus/rules/."""
    queries: dict[str, str] = {}
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                queries[f"{path.name}: {name}"] = rule["expr"]
    return queries


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs it (Debian package prometheus)"
    return path


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


# -- real /metrics output ----------------------------------------------------------


@pytest.fixture
async def exposition(auth: Client, make_replica: ResourceFactory) -> dict[str, str]:
    """/metrics of an auth service and a replica after logins, a refresh, a logout."""
    replica = await make_replica("r1")
    body = await register_and_login(auth, credential="both")
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await replica.get("/api/me", headers=bearer)).status == 200
    assert (await replica.get("/api/me", headers=bearer)).status == 200  # a cache hit
    assert (await replica.get("/api/me")).status == 401
    response = await auth.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
    )
    assert response.status == 200
    fresh = await response.json()
    failed = await auth.post("/auth/login", json={"username": "nobody", "password": "x" * 12})
    assert failed.status == 401
    response = await auth.post(
        "/auth/logout", headers={"Authorization": f"Bearer {fresh['access_token']}"}
    )
    assert response.status in (200, 204)
    return {
        "auth": await (await auth.get("/metrics")).text(),
        "resource": await (await replica.get("/metrics")).text(),
    }


@pytest.fixture
def exported(exposition: dict[str, str]) -> set[str]:
    """Every series name the auth service and the replicas export."""
    return series_names(exposition["auth"]) | series_names(exposition["resource"])


@pytest.mark.parametrize("service", ["auth", "resource"])
def test_metrics_output_passes_promtool_check_metrics(
    service: str, exposition: dict[str, str]
) -> None:
    result = run_promtool("check", "metrics", stdin=exposition[service])
    # promtool prints lint problems ("counter metrics should have _total suffix",
    # "metric name should not include type", ...) and exits non-zero.
    assert result.returncode == 0, f"{service}:\n{result.stdout}{result.stderr}"
    assert not result.stdout.strip(), result.stdout


def test_every_family_in_the_readme_observability_table_is_exported_and_vice_versa(
    exposition: dict[str, str],
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(tessera_[a-z_]+)`", readme, flags=re.MULTILINE))
    families: dict[str, str] = {}
    for text in exposition.values():
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
    # prometheus_client writes each counter's and histogram's creation time as
    # a gauge family of its own, NAME_created: not a metric to document.
    exported = {
        name + ("_total" if kind == "counter" else "")
        for name, kind in families.items()
        if not (name.endswith("_created") and name.removesuffix("_created") in families)
    }
    assert documented == exported


def test_the_name_extractor_sees_through_functions_matchers_and_label_lists() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route=~"/api/.+"}[5m])))'
        " / ignoring (instance) group_left sum(b_total offset 5m) > bool 1e3"
        ' and on (job) up{job="x"} unless c:rate5m'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up", "c:rate5m"}


def test_the_dashboard_shows_the_load_balancer_picture() -> None:
    (dashboard,) = dashboards().values()
    titles = {panel["title"] for panel in _panels(dashboard)}
    for wanted in (
        "Requests per replica",
        "Auth decisions by method and outcome",
        "Request latency percentiles",
        "Cache hit ratio",
        "Dependency latency (p99)",
        "Live sessions",
        "Logins by outcome",
        "Refreshes by outcome",
        "Revocations by kind",
    ):
        assert wanted in titles
    used = set().union(*(metric_names(expr) for expr in dashboard_queries().values()))
    for family in (
        "tessera_http_requests_total",
        "tessera_http_request_duration_seconds_bucket",
        "tessera_auth_decisions_total",
        "tessera_dependency_duration_seconds_bucket",
        "tessera_cache_requests_total",
        "tessera_sessions_live",
        "tessera_logins_total",
        "tessera_refreshes_total",
        "tessera_revocations_total",
    ):
        assert family in used


def test_dashboard_queries_use_only_metric_names_the_services_export(exported: set[str]) -> None:
    queries = dashboard_queries()
    assert queries
    for key, expr in queries.items():
        names = metric_names(expr)
        assert names, f"{key}: no metric in {expr!r}"
        unknown = names - exported - SCRAPE_SERIES
        assert not unknown, f"{key} asks for {sorted(unknown)}, which no service exports"


def test_alert_rules_use_only_metric_names_the_services_export(exported: set[str]) -> None:
    queries = rule_queries()
    assert queries
    for key, expr in queries.items():
        unknown = metric_names(expr) - exported - SCRAPE_SERIES
        assert not unknown, f"{key} asks for {sorted(unknown)}, which no service exports"


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    # promtool parses each expression of a rule file: the dashboard's queries
    # become recording rules of a throwaway one.
    rules = [
        {"record": f"tessera_dashboard:query_{number}", "expr": expr}
        for number, expr in enumerate(dashboard_queries().values())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_alert_rules_and_the_compose_prometheus_configuration_pass_promtool() -> None:
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        result = run_promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
    result = run_promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_panels_fit_the_grid_and_use_the_datasource_variable() -> None:
    for name, dashboard in dashboards().items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [panel["id"] for panel in _panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        cells: set[tuple[int, int]] = set()
        for panel in _panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
            area = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not area & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= area
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
                assert source == {"type": "prometheus", "uid": "${datasource}"}


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    mounts = dict(
        volume.split(":")[:2]
        for volume in compose["services"]["grafana"]["volumes"]
        if volume.startswith("./")
    )
    assert Path(mounts["./deploy/grafana/provisioning"]) == Path("/etc/grafana/provisioning")
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "tessera.yml").read_text())[
        "providers"
    ]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    (dashboard,) = dashboards().values()
    current = dashboard["templating"]["list"][0]["current"]["value"]
    assert current == source["uid"]
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert Path(home).parent == Path(provider["options"]["path"])
    assert (DASHBOARD_DIR / Path(home).name).is_file()
