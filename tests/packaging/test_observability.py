"""The Grafana dashboard and the Prometheus alerts only query metrics that really exist.

A dashboard panel or an alert on a misspelt metric is silent: the panel shows "No data", the alert never
fires. So the metric names and label names are pulled out of every PromQL expression and compared with
what the server's and the operator's /metrics endpoints actually serve, scraped over HTTP here.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from packaging_helpers import OBSERVABILITY, ROOT

DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
RULES = OBSERVABILITY / "prometheus-rules.yaml"

# Labels Prometheus attaches to every scraped series from the target (ServiceMonitor/pod discovery), so
# queries may use them although no exporter emits them.
TARGET_LABELS = {"namespace", "service", "pod", "job", "instance", "container", "endpoint"}
# Series Prometheus itself produces; they are not exported by anyone.
PROMETHEUS_BUILTINS = {"up"}
PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
    "bool", "inf", "nan", "Inf", "NaN",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

REQUIRED_PANELS = {
    "request rate": r"request rate",
    "error rate": r"error rate",
    "latency percentiles": r"latency p50 / p95 / p99",
    "queue depth": r"queue depth",
    "batch size": r"batch size",
    "predictions by label": r"predictions by label",
    "gpu memory": r"gpu memory",
    "operator reconciles": r"reconciles by result",
    "operator failures": r"reconcile failures",
    "rollout state": r"rollout state",
    "validation": r"validation",
}
REQUIRED_ALERTS = {
    "DeepDetectHighErrorRate",
    "DeepDetectQueueSaturated",
    "DeepDetectRolloutFailed",
    "DeepDetectCheckpointUnresolved",
    "DeepDetectOperatorDown",
}


# ---------------------------------------------------------------- PromQL tokenising


def _strip(expr: str) -> str:
    """Remove what is not a metric name: strings, ranges, Grafana variables, grouping label lists."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    e = re.sub(r"'(?:\\.|[^'\\])*'", "''", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    return e


def metric_names(expr: str) -> set[str]:
    """Every metric name in a PromQL expression (functions, aggregations, keywords and numbers skipped)."""
    e = re.sub(r"\{[^}]*\}", "", _strip(expr))
    names: set[str] = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        token = m.group(0)
        before = e[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent of 1e-9
        if e[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if token in PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def selector_labels(expr: str) -> list[tuple[str, str]]:
    """(metric, label) for every label used in a selector `metric{label="..."}`."""
    e = _strip(expr)
    out: list[tuple[str, str]] = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", e):
        for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)):
            out.append((m.group(1), label))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by/without/on/ignoring clauses."""
    labels: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in m.group(1).split(",") if x.strip())
    return labels


def base_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (route) (rate(dd_requests_total{status=~"5.."}[5m]))', {"dd_requests_total"}),
        (
            "histogram_quantile(0.95, sum by (le) (rate(x_seconds_bucket{a=\"$ns\"}[$__rate_interval])))",
            {"x_seconds_bucket"},
        ),
        ("a / clamp_min(b, 1e-9) > 0.05 and on (pod) c offset 5m", {"a", "b", "c"}),
        ('absent(up{job=~".*op.*"} == 1)', {"up"}),
        ('count(m{state="Failed"} == 1) or vector(0)', {"m"}),
    ],
)
def test_tokeniser(expr: str, names: set[str]) -> None:
    """The extraction itself, on the constructs the assets use."""
    assert metric_names(expr) == names


# ---------------------------------------------------------------- the assets


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def all_exprs() -> list[tuple[str, str]]:
    return dashboard_exprs() + [(r["alert"], r["expr"]) for r in rules()]


def test_dashboard_covers_what_operators_ask() -> None:
    """One panel per question an on-call engineer asks, latency as p50/p95/p99 via histogram_quantile."""
    dash = dashboard()
    titles = [p["title"].lower() for p in dash["panels"]]
    for what, pattern in REQUIRED_PANELS.items():
        assert any(re.search(pattern, t) for t in titles), f"no panel for {what}"
    latency = next(p for p in dash["panels"] if "latency p50" in p["title"].lower())
    found = [re.search(r"histogram_quantile\(([\d.]+)", t["expr"]) for t in latency["targets"]]
    quantiles = sorted(float(m.group(1)) for m in found if m)
    assert quantiles == [0.5, 0.95, 0.99]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert dash["uid"] and dash["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "service"} <= variables
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_alerts_are_runbook_ready() -> None:
    """Every alert has a duration, a severity and the annotations a pager needs, and its runbook anchor
    exists in docs/install.md."""
    found = {r["alert"] for r in rules()}
    assert found >= REQUIRED_ALERTS
    install = (ROOT / "docs" / "install.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-") for h in
               re.findall(r"^#+\s+(.+)$", install, flags=re.M)}
    for rule in rules():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        ann = rule["annotations"]
        assert {"summary", "description", "runbook_url", "runbook"} <= ann.keys(), rule["alert"]
        anchor = ann["runbook_url"].rsplit("#", 1)[-1]
        assert anchor == rule["alert"].lower() and anchor in anchors, f"docs/install.md lacks #{anchor}"


@pytest.mark.parametrize(("where", "expr"), all_exprs())
def test_expressions_are_balanced(where: str, expr: str) -> None:
    """A cheap syntax guard (no promtool here): brackets and quotes balance."""
    stripped = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)
    for open_, close in ("()", "{}", "[]"):
        assert stripped.count(open_) == stripped.count(close), where
    assert stripped.count('"') == 0, where


# ---------------------------------------------------------------- scraping the real exporters


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(url)
        time.sleep(0.1)


def parse_exposition(text: str) -> dict[str, set[str]]:
    """Metric name -> label names, from the Prometheus text format. Families with no samples yet
    (labelled metrics before the first observation) count too: they are exported, just empty."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        names = {family.name}
        if family.type == "counter":
            names.add(family.name + "_total")
        for name in names:
            out.setdefault(name, set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
            for name in names:
                out[name].update(k for k in sample.labels if k != "le")
    return out


@pytest.fixture(scope="module")
def server_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """Start the real inference server (uvicorn on a free port) with a tiny real checkpoint, send one
    image through /v1/detect so the labelled series have samples, and scrape /metrics."""
    import uvicorn
    from deepdetect_server.app import create_app
    from deepdetect_server.checkpoint import card_for_architecture, create_checkpoint
    from deepdetect_server.config import ServerSettings

    tmp = tmp_path_factory.mktemp("server")
    ckpt = tmp / "model.safetensors"
    create_checkpoint(ckpt, card_for_architecture("test_efficientnet", 64))
    settings = ServerSettings(checkpoint=ckpt, port=_free_port(), host="127.0.0.1", warmup_batches=0)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{settings.port}"
    try:
        _wait_http(f"{base}/v2/health/ready")
        response = httpx.post(f"{base}/v1/detect", content=_png(), headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        scraped = httpx.get(f"{base}/metrics", timeout=10.0)
        assert scraped.status_code == 200
        yield parse_exposition(scraped.text)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 80), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def operator_metrics() -> dict[str, set[str]]:
    """Scrape the operator's real metrics server (prometheus_client's HTTP server on its own registry,
    as `deepdetect-operator run` starts it on :9090) after one reconcile has been observed."""
    from deepdetect_operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    metrics.observe(
        "trust-safety", "faces", result="ok", seconds=0.02, phase="Ready", rollout_state="Complete",
        checkpoint_ok=True, validation_state="Passed",
    )
    port = _free_port()
    metrics.serve(port, addr="127.0.0.1")
    _wait_http(f"http://127.0.0.1:{port}/metrics")
    return parse_exposition(httpx.get(f"http://127.0.0.1:{port}/metrics").text)


def test_every_queried_metric_is_exported(
    server_metrics: dict[str, set[str]], operator_metrics: dict[str, set[str]]
) -> None:
    """Each metric in each dashboard panel and alert is served by the server or the operator."""
    exported = server_metrics.keys() | operator_metrics.keys()
    missing = []
    for where, expr in all_exprs():
        for name in metric_names(expr):
            if name in PROMETHEUS_BUILTINS:
                continue
            if name not in exported and base_name(name) not in exported:
                missing.append(f"{where}: {name}")
    assert missing == []


def test_every_queried_label_exists(
    server_metrics: dict[str, set[str]], operator_metrics: dict[str, set[str]]
) -> None:
    """Label matchers and grouping labels name labels the metric carries (or Prometheus target labels):
    `state` where the metric says `phase` would match nothing, silently."""
    exported: dict[str, set[str]] = {}
    for source in (server_metrics, operator_metrics):
        for name, labels in source.items():
            exported.setdefault(name, set()).update(labels)
    # A labelled family with no series yet shows no label names in a scrape (on this CPU machine the
    # CUDA-only deepdetect_gpu_memory_bytes{device} is such a family): take its labels from the contract.
    for name, labels in contract_labels().items():
        if name in exported and not exported[name]:
            exported[name] = labels
    problems = []
    for where, expr in all_exprs():
        for metric, label in selector_labels(expr):
            if metric in PROMETHEUS_BUILTINS:
                continue
            known = exported.get(metric, set()) | exported.get(base_name(metric), set())
            if label not in known | TARGET_LABELS:
                problems.append(f"{where}: {metric}{{{label}}}")
        all_known = set().union(*exported.values()) | TARGET_LABELS | {"le"}
        problems += [f"{where}: by ({label})" for label in grouping_labels(expr) - all_known]
    assert problems == []


def contract_labels() -> dict[str, set[str]]:
    """Full metric name -> label names as docs/CONTRACTS.md declares them (`name{a,b}`)."""
    contracts = (ROOT / "docs" / "CONTRACTS.md").read_text()
    section = contracts.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    server_part, operator_part = section.split("Operator (", 1)
    out: dict[str, set[str]] = {}
    for part, prefix in ((server_part, "deepdetect_"), (operator_part, "deepdetect_operator_")):
        for short, labels in re.findall(r"`([a-z_]+)\{([a-z_,]+)\}`", part):
            out[prefix + short] = set(labels.split(","))
    return out


def test_contract_metrics_are_all_exported(
    server_metrics: dict[str, set[str]], operator_metrics: dict[str, set[str]]
) -> None:
    """The other direction: docs/CONTRACTS.md's metric list is what the exporters serve."""
    contracts = (ROOT / "docs" / "CONTRACTS.md").read_text()
    section = contracts.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    server_part, operator_part = section.split("Operator (", 1)
    for part, prefix, exported in (
        (server_part, "deepdetect_", server_metrics),
        (operator_part, "deepdetect_operator_", operator_metrics),
    ):
        for short in re.findall(r"`([a-z_]+)(?:\{[^`]*\})?`", part):
            if short in {"deepdetect_", "deepdetect_operator_", "result"} or short.endswith("_"):
                continue
            assert prefix + short in exported, f"{prefix}{short} listed in CONTRACTS.md but not exported"
