"""The chart's Grafana dashboard and alert rules: rendered, validated, unit-tested with promtool,
and every metric and label they query checked against a live proxy's /metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProxyFactory
from tests.deploy.chart import CHART, KUBERNETES_VERSIONS, ROOT, RenderError, helm, render
from tests.fake_lunary import FakeLunary
from tests.servers import RedisServer
from tests.tools import required_tool

RULES = CHART / "rules" / "lunary-cache-proxy.rules.yaml"
DASHBOARD = CHART / "dashboards" / "lunary-cache-proxy.json"
RULES_TESTS = Path(__file__).with_name("rules_test.yaml")
TOOLS = ROOT / ".cache" / "tools"  # where scripts/test puts the tools it downloads
SCENARIO = "observability-values.yaml"
BOTH_ON = ("grafanaDashboard.enabled=true", "prometheusRule.enabled=true")
RUNBOOK = (
    "https://github.com/lunary-cache-proxy/lunary-cache-proxy/blob/main/README.md"
    "#alerts-and-runbook"
)
# Labels the scrape adds (a ServiceMonitor's, or a static config's job and instance); `le` is a
# histogram bucket's own.
TARGET_LABELS = frozenset({"namespace", "job", "instance", "pod"})
# Grafana's variables, as PromQL can parse them
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}

METRIC = re.compile(r"\blunary_proxy_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(lunary_proxy_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(by|without)\s*\(([^)]*)\)")
JOINING = re.compile(r"\b(on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(\s*(lunary_proxy_[a-z0-9_]+)[^,]*,\s*(\w+)\s*\)")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")


def rules_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    """Every panel but the rows, nested ones included."""
    found = []
    for panel in dashboard()["panels"]:
        found += panel.get("panels", [])
        if panel["type"] != "row":
            found.append(panel)
    return found


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def variable_queries() -> list[str]:
    return [
        variable["definition"]
        for variable in dashboard()["templating"]["list"]
        if variable["type"] == "query"
    ]


def promtool() -> str:
    """PROMTOOL (set by scripts/test, which unpacks it from Debian's prometheus package)."""
    return required_tool(
        "promtool", "Debian package prometheus", os.environ.get("PROMTOOL"), TOOLS / "promtool"
    )


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )


# -- the chart objects --------------------------------------------------------------------------


def test_both_are_off_by_default() -> None:
    rendered = render("default-values.yaml")
    assert rendered.all("PrometheusRule") == []
    assert [m["metadata"]["name"] for m in rendered.all("ConfigMap")] == [
        "release-lunary-cache-proxy"
    ]


@pytest.mark.parametrize(
    "values", [("--set", ",".join(BOTH_ON)), ("--values", str(CHART / "ci" / SCENARIO))]
)
def test_lint_strict_passes_with_both_on(values: tuple[str, str]) -> None:
    result = helm("lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_rendered_objects_validate(version: str) -> None:
    """kubernetes-validate knows the ConfigMap; the PrometheusRule is a CRD it has no schema
    for, so its shape is checked by the tests below instead."""
    tool = str(Path(sys.executable).with_name("kubernetes-validate"))
    result = subprocess.run(
        [tool, "--kubernetes-version", version, "--strict", "-"],
        input=render(SCENARIO).text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output
    assert "passed for resource configmap/release-lunary-cache-proxy-dashboard" in output


def test_the_configmap_carries_the_dashboard_byte_for_byte() -> None:
    rendered = render(SCENARIO)
    config = rendered.one("ConfigMap", "dashboard")
    assert config["data"] == {"lunary-cache-proxy.json": DASHBOARD.read_text()}
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["metadata"]["annotations"] == {"grafana_folder": "Lunary"}
    # not taken for the proxy's own settings ConfigMap
    assert rendered.one("ConfigMap")["metadata"]["name"] == "release-lunary-cache-proxy"


def test_the_dashboard_label_namespace_and_extra_labels_are_configurable() -> None:
    config = render(
        sets=(
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.label=dashboards",
            "grafanaDashboard.labelValue=1",  # --set makes it a number: quoted all the same
            "grafanaDashboard.namespace=monitoring",
            "grafanaDashboard.labels.team=platform",
        )
    ).one("ConfigMap", "dashboard")
    assert config["metadata"]["namespace"] == "monitoring"
    labels = config["metadata"]["labels"]
    assert labels["dashboards"] == "1"
    assert labels["team"] == "platform"
    assert "grafana_dashboard" not in labels


def test_the_prometheusrule_holds_the_rules_file_less_disabled_plus_labels() -> None:
    rendered = render(SCENARIO)
    rule = rendered.one("PrometheusRule", "alerts")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    expected = rules_file()["groups"]
    for group in expected:
        group["rules"] = [
            {**r, "labels": {**r["labels"], "team": "platform"}}
            for r in group["rules"]
            if r["alert"] != "LunaryCacheProxyNearTierBypassed"
        ]
    assert rule["spec"]["groups"] == expected
    assert len(alerts(rule["spec"]["groups"])) == len(alerts(rules_file()["groups"])) - 1


def test_an_alerts_own_labels_win_over_rule_labels() -> None:
    rule = render(sets=(*BOTH_ON, "prometheusRule.ruleLabels.severity=page")).one(
        "PrometheusRule", "alerts"
    )
    severities = {r["labels"]["severity"] for r in alerts(rule["spec"]["groups"])}
    assert severities == {r["labels"]["severity"] for r in alerts(rules_file()["groups"])}


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("prometheusRule.disabledAlerts={LunaryCacheProxyTypo}", "no alert is named"),
        ("prometheusRule.ruleLabels.tier=1", "ruleLabels"),  # label values are strings
        ("prometheusRule.disabled=true", "disabled"),
        ("grafanaDashboard.label=not a label", "label"),
        ("grafanaDashboard.enabeld=true", "enabeld"),
    ],
)
def test_bad_values_are_refused(assignment: str, complaint: str) -> None:
    with pytest.raises(RenderError, match=complaint):
        render(sets=(*BOTH_ON, assignment))


# -- the rules ------------------------------------------------------------------------------------


def test_every_alert_is_labelled_annotated_and_points_at_the_runbook() -> None:
    rules = alerts(rules_file()["groups"])
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        assert annotations["runbook_url"] == RUNBOOK
        minutes = re.fullmatch(r"(\d+)m", rule["for"])
        assert minutes, rule["alert"]
        assert 1 <= int(minutes[1]) <= 60, rule["alert"]


def test_the_issue_names_alerts_for_what_matters() -> None:
    queried = {rule["alert"]: rule["expr"] for rule in alerts(rules_file()["groups"])}
    needed = {
        "lunary_proxy_store_breaker_open",
        'status="5xx"',
        'status=~"timeout|unreachable"',
        "lunary_proxy_upstream_cooldowns_total",
        "lunary_proxy_store_corrupt_entries_total",
        "lunary_proxy_store_errors_total",
        'lunary_proxy_invalidations_total{result="error"}',
    }
    for fragment in needed:
        assert any(fragment in expr for expr in queried.values()), fragment
    collapse = queried["LunaryCacheProxyHitRatioCollapsed"]
    assert re.search(r"rate\(lunary_proxy_requests_total\[15m\]\)\) > [0-9.]+\s*$", collapse)


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in alerts(rules_file()["groups"])}


def test_promtool_checks_the_rules_file() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_rendered_prometheusrule(tmp_path: Path) -> None:
    spec = render(SCENARIO).one("PrometheusRule", "alerts")["spec"]
    rendered = tmp_path / "rendered.rules.yaml"
    rendered.write_text(yaml.safe_dump(spec))
    result = run_promtool("check", "rules", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(spec['groups']))} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """Each alert fires on a synthetic failure, and not on a healthy or too quiet proxy."""
    result = run_promtool("test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# -- the dashboard --------------------------------------------------------------------------------


def test_the_dashboard_is_importable_as_it_is() -> None:
    board = dashboard()
    assert board["uid"] == "lunary-cache-proxy"
    assert board["id"] is None
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job", "instance"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_has_a_title_and_queries_through_the_datasource_variable() -> None:
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["title"], panel["id"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == source, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
            assert target["expr"].strip(), panel["title"]
            for variable in ("$namespace", "$job", "$instance"):
                assert variable in target["expr"], (panel["title"], variable)


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_the_dashboard_shows_what_the_issue_lists() -> None:
    queries = "\n".join(dashboard_queries())
    for metric in (
        "lunary_proxy_requests_total",
        "lunary_proxy_upstream_requests_total",
        "lunary_proxy_upstream_request_duration_seconds_bucket",
        "lunary_proxy_upstream_cooldowns_total",
        "lunary_proxy_cooldown_rejections_total",
        "lunary_proxy_store_operation_duration_seconds_bucket",
        "lunary_proxy_upstream_errors_total",
        "lunary_proxy_store_errors_total",
        "lunary_proxy_store_breaker_open",
        "lunary_proxy_coalesced_waits_total",
        "lunary_proxy_invalidations_total",
        "lunary_proxy_responses_not_stored_total",
        "lunary_proxy_store_corrupt_entries_total",
        "lunary_proxy_cuts_total",
        "lunary_proxy_background_refreshes_total",
        "lunary_proxy_near_lookups_total",
        "lunary_proxy_near_invalidations_total",
        "lunary_proxy_near_evictions_total",
        "lunary_proxy_near_entries",
        "lunary_proxy_near_bytes",
    ):
        assert metric in queries, metric


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses them, as recording rules, with Grafana's variables filled in."""

    def filled(query: str) -> str:
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        return re.sub(r"\$\{?\w+\}?", ".*", query)

    rules = [
        {"record": f"dashboard:query_{i}", "expr": filled(query)}
        for i, query in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- against a live proxy -------------------------------------------------------------------------


def inside_after(text: str, start: int) -> str:
    """The text inside the parenthesis that opens at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i]
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def inside_before(text: str, end: int) -> str:
    """The text inside the parenthesis that closes at `end`."""
    depth = 0
    for i in range(end, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return text[i + 1 : end]
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def label_uses(query: str) -> Iterator[tuple[str, str]]:
    """(metric, label) for every label a query reads: in a selector's matchers, in a `by` or
    `without` (for each metric aggregated), in `on`/`ignoring` (for each metric of the query)."""
    for selector in SELECTOR.finditer(query):
        for matcher in MATCHER.finditer(selector[2]):
            yield selector[1], matcher[1]
    for grouping in GROUPING.finditer(query):
        labels = [label.strip() for label in grouping[2].split(",") if label.strip()]
        after = query[grouping.end() :].lstrip()
        if after.startswith("("):  # sum by (x) (expr)
            scope = inside_after(after, 0)
        else:  # sum(expr) by (x)
            before = query[: grouping.start()].rstrip()
            scope = inside_before(before, len(before) - 1)
        for metric in METRIC.findall(scope):
            for label in labels:
                yield metric, label
    for joining in JOINING.finditer(query):
        for metric in METRIC.findall(query):
            for label in joining[2].split(","):
                if label.strip():
                    yield metric, label.strip()
    for values in LABEL_VALUES.finditer(query):
        yield values[1], values[2]


class Exported:
    """What a /metrics page declares: sample names by their # TYPE, labels by their samples."""

    SUFFIXES: ClassVar = {
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
    }

    def __init__(self, text: str) -> None:
        self.names: set[str] = set()
        for name, kind in re.findall(r"^# TYPE (\S+) (\w+)$", text, re.MULTILINE):
            self.names.update(name + suffix for suffix in self.SUFFIXES.get(kind, ("",)))
        self.labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.labels.setdefault(sample.name, set()).update(sample.labels)

    def problems(self, where: str, query: str) -> list[str]:
        found = []
        metrics = set(METRIC.findall(query))
        for metric in metrics - self.names:
            found.append(f"{where}: {metric} is not exported")
        for metric, label in label_uses(query):
            if label in TARGET_LABELS or metric not in self.names:
                continue
            if metric not in self.labels:
                found.append(f"{where}: {metric} has no samples to check {label} against")
            elif label not in self.labels[metric]:
                found.append(f"{where}: {metric} has no label {label}")
        return found

    def result_labels(self, query: str) -> set[str]:
        metrics = METRIC.findall(query)
        return set(TARGET_LABELS).union(*(self.labels.get(m, set()) for m in metrics))


def drive_every_labelled_family(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> str:
    """A proxy on a real Redis (so the store and in-process tier families count), made to count
    something in every family with labels; its /metrics page."""
    proxy = make_proxy(redis_url=redis_url)
    key, run = fake.add_key(), fake.add_run()
    headers = {"X-API-Key": key}
    json_body = {**headers, "Content-Type": "application/json"}
    for path in (f"/v1/runs/{run}", f"/v1/runs/{run}", f"/v1/runs/{run}/related"):
        assert proxy.get(path, headers=headers).status_code == 200
    assert proxy.get("/v1/runs/count", headers=headers).status_code == 200  # passthrough
    fake.extra_headers = {"Set-Cookie": "session=1"}  # an answer not stored
    assert proxy.get(f"/v1/runs/{fake.add_run()}", headers=headers).status_code == 200
    fake.extra_headers = {}
    fake.latency = 0.3  # concurrent misses join one fetch
    shared = f"/v1/runs/{fake.add_run()}"
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: proxy.get(shared, headers=headers), range(4)))
    fake.latency = 0.0
    assert {answer.status_code for answer in answers} == {200}
    write = proxy.client.patch(  # an invalidation
        f"/v1/runs/{run}/tags", content=b'{"tags": ["a"]}', headers=json_body
    )
    assert write.status_code == 200
    unreadable = proxy.client.post(
        "/v1/runs/ingest",
        content=b'{"events": [{"runId": 1.5, "event": "feedback"}]}',  # a fail-safe cut
        headers=json_body,
    )
    assert unreadable.status_code == 200
    fake.crashed = True  # an upstream request without an answer
    assert proxy.get(f"/v1/runs/{fake.add_run()}", headers=headers).status_code == 502
    fake.restart()
    with redis_server.down():  # store errors
        proxy.get(f"/v1/runs/{fake.add_run()}", headers=headers)
    return proxy.get("/metrics").text


def test_every_metric_and_label_queried_is_exported_by_a_live_proxy(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    exported = Exported(drive_every_labelled_family(make_proxy, fake, redis_url, redis_server))
    problems = []
    for panel in panels():
        for target in panel["targets"]:
            problems += exported.problems(f"panel {panel['title']!r}", target["expr"])
            legend = set(LEGEND_LABEL.findall(target["legendFormat"]))
            for label in legend - exported.result_labels(target["expr"]):
                problems.append(f"panel {panel['title']!r}: legend label {label} is not there")
    for query in variable_queries():
        problems += exported.problems("variable", query)
    for rule in alerts(rules_file()["groups"]):
        problems += exported.problems(f"alert {rule['alert']}", rule["expr"])
        used = set(TEMPLATE_LABEL.findall(json.dumps(rule["annotations"])))
        for label in used - exported.result_labels(rule["expr"]):
            problems.append(f"alert {rule['alert']}: annotation label {label} is not there")
    assert problems == []


def test_the_label_reader_sees_what_a_query_reads() -> None:
    """The check above is only as good as its PromQL reading: a typo'd label must show."""
    query = (
        "histogram_quantile(0.9,"
        ' sum by (le, purpose) (rate(lunary_proxy_x_bucket{status="5xx"}[5m])))'
        " / on (job) sum(rate(lunary_proxy_y_total[5m])) by (rout)"
    )
    uses = set(label_uses(query))
    assert ("lunary_proxy_x_bucket", "status") in uses
    assert ("lunary_proxy_x_bucket", "purpose") in uses
    assert ("lunary_proxy_y_total", "rout") in uses
    assert ("lunary_proxy_y_total", "job") in uses
    assert ("lunary_proxy_x_bucket", "rout") not in uses
    page = (
        "# TYPE lunary_proxy_y_total counter\n"
        'lunary_proxy_y_total{route="run"} 1.0\n'
        "# TYPE lunary_proxy_z histogram\n"
    )
    exported = Exported(page)
    assert exported.problems("q", "sum by (route) (rate(lunary_proxy_y_total[5m]))") == []
    assert exported.problems("q", "rate(lunary_proxy_y[5m])") == [
        "q: lunary_proxy_y is not exported"
    ]
    assert exported.problems("q", "sum by (rout) (rate(lunary_proxy_y_total[5m]))") == [
        "q: lunary_proxy_y_total has no label rout"
    ]
    assert exported.problems("q", "rate(lunary_proxy_z_count[5m])") == []
    assert exported.problems("q", 'rate(lunary_proxy_z_count{purpose="fill"}[5m])') == [
        "q: lunary_proxy_z_count has no samples to check purpose against"
    ]
