"""helm/README.md's values table: generated from values.yaml's comments, checked in up to date."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART, ROOT

SCRIPT = ROOT / "scripts" / "chart-readme"
START, END = "<!-- values:start -->", "<!-- values:end -->"


@dataclass(frozen=True)
class Row:
    type: str
    default: str
    description: str


def chart_readme(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def table(readme: str) -> dict[str, Row]:
    """The generated table by key, cells unescaped."""
    region = readme.split(START, 1)[1].split(END, 1)[0]
    found: dict[str, Row] = {}
    for line in region.strip().splitlines()[2:]:
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        key, type_, default, description = cells
        found[key.strip("`")] = Row(type_, default.removeprefix("`").removesuffix("`"), description)
    return found


def leaves(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def value_at(values: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        values = values[key]
    return values


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "helm"
    copy.mkdir()
    for name in ("values.yaml", "values.schema.json", "README.md"):
        shutil.copy(CHART / name, copy / name)
    return copy


def test_the_checked_in_readme_is_up_to_date() -> None:
    result = chart_readme("--check")
    assert result.returncode == 0, result.stderr


def test_every_value_has_a_row_with_its_default_and_a_description() -> None:
    """A leaf has its own row, or lies inside a value the schema takes whole (a Probe, say),
    whose row shows the whole default."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = table((CHART / "README.md").read_text())
    for path, value in leaves(values):
        if path in rows:
            assert json.loads(rows[path].default) == value, path
            continue
        parts = path.split(".")
        whole = [
            ".".join(parts[:end])
            for end in range(len(parts) - 1, 0, -1)
            if rows.get(".".join(parts[:end]), Row("", "", "")).default
        ]
        assert whole, f"{path} is not in the values table"
        assert json.loads(rows[whole[0]].default) == value_at(values, whole[0])
    for key, row in rows.items():
        value_at(values, key)  # no row for a key values.yaml does not have
        assert row.description, key


def test_types_come_from_the_schema() -> None:
    rows = table((CHART / "README.md").read_text())
    assert rows["podDisruptionBudget.maxUnavailable"].type == "integer or string"
    assert rows["startupProbe"].type == "object or null"
    assert rows["metrics.serviceMonitor.scheme"].type == "string"
    assert rows["metrics.serviceMonitor.scheme"].description.endswith("One of `http`, `https`.")
    assert rows["metrics.serviceMonitor.relabelings"].default == "[]"


def drop_comment_above(text: str, key_line: str) -> str:
    lines = text.splitlines(keepends=True)
    at = lines.index(key_line)
    start = at
    while lines[start - 1].lstrip().startswith("#"):
        start -= 1
    assert start < at, "the test expects a comment there"
    return "".join(lines[:start] + lines[at:])


def detach_comment_above(text: str, key_line: str) -> str:
    return text.replace(key_line, "\n" + key_line, 1)


def add_undocumented_key(text: str, key_line: str) -> str:
    return text.replace(key_line, f"{key_line}    honorTimestamps: true\n", 1)


@pytest.mark.parametrize("edit", [drop_comment_above, detach_comment_above, add_undocumented_key])
def test_a_value_without_a_comment_is_refused(
    chart_copy: Path, edit: Callable[[str, str], str]
) -> None:
    values = chart_copy / "values.yaml"
    readme_before = (chart_copy / "README.md").read_text()
    values.write_text(edit(values.read_text(), "    honorLabels: false\n"))
    result = chart_readme("--chart", str(chart_copy))
    assert result.returncode == 1
    key = "honorTimestamps" if edit is add_undocumented_key else "honorLabels"
    assert f"metrics.serviceMonitor.{key}" in result.stderr
    assert "no comment" in result.stderr
    assert (chart_copy / "README.md").read_text() == readme_before


def test_a_changed_comment_makes_the_readme_stale_until_regenerated(chart_copy: Path) -> None:
    values = chart_copy / "values.yaml"
    readme = chart_copy / "README.md"
    before = readme.read_text()
    old = "# How often Prometheus scrapes.\n"
    assert old in values.read_text()
    values.write_text(values.read_text().replace(old, "# Seconds | minutes between scrapes.\n"))

    stale = chart_readme("--check", "--chart", str(chart_copy))
    assert stale.returncode == 1
    assert "README.md is out of date: run scripts/chart-readme" in stale.stderr
    assert readme.read_text() == before  # --check writes nothing

    assert chart_readme("--chart", str(chart_copy)).returncode == 0
    after = readme.read_text()
    row = table(after)["metrics.serviceMonitor.interval"]
    assert row.description == "Seconds | minutes between scrapes."
    # the hand-written parts around the markers are kept as they were
    assert after.split(START)[0] == before.split(START)[0]
    assert after.split(END)[1] == before.split(END)[1]
    assert chart_readme("--check", "--chart", str(chart_copy)).returncode == 0


def test_a_readme_without_the_markers_is_refused(chart_copy: Path) -> None:
    readme = chart_copy / "README.md"
    readme.write_text(readme.read_text().replace(END, ""))
    result = chart_readme("--chart", str(chart_copy))
    assert result.returncode == 1
    assert END in result.stderr
