"""Renders the Helm chart with the real helm binary, for the chart tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm"
SCENARIOS = sorted(path.name for path in (CHART / "ci").glob("*-values.yaml"))
# The oldest Kubernetes still in wide use that the chart supports, and a recent one.
KUBERNETES_VERSIONS = ("1.29.0", "1.34.0")


def helm_binary() -> str:
    """HELM (set by scripts/test), else helm on PATH, else the copy scripts/test downloads."""
    for candidate in (os.environ.get("HELM"), shutil.which("helm"), ROOT / ".cache/tools/helm"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise RuntimeError("helm is not installed: run scripts/test, which fetches it")


def helm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, input=stdin, timeout=60
    )


@dataclass(frozen=True)
class Rendered:
    """The manifests of one `helm template`, by kind and name."""

    text: str
    documents: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def one(self, kind: str, component: str = "proxy") -> dict[str, Any]:
        found = [
            doc
            for doc in self.all(kind)
            if doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", "proxy")
            == component
        ]
        assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}"
        return found[0]

    def container(self, name: str = "proxy") -> dict[str, Any]:
        pod = self.one("Deployment")["spec"]["template"]["spec"]
        return next(c for c in pod["containers"] if c["name"] == name)


class StrictLoader(yaml.SafeLoader):
    """Refuses a mapping that repeats a key; PyYAML would silently keep the last one."""


def _mapping_without_duplicates(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    keys = [loader.construct_object(key) for key, _ in node.value]
    repeated = {key for key in keys if keys.count(key) > 1}
    if repeated:
        raise RenderError(f"repeated keys {sorted(repeated)} {node.start_mark}")
    return loader.construct_mapping(node)


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _mapping_without_duplicates,
)


def render(*values_files: str, sets: tuple[str, ...] = ()) -> Rendered:
    args = ["template", "release", str(CHART), "--namespace", "apps"]
    for name in values_files:
        args += ["--values", str(CHART / "ci" / name)]
    for assignment in sets:
        args += ["--set", assignment]
    result = helm(*args)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    documents = [doc for doc in yaml.load_all(result.stdout, Loader=StrictLoader) if doc]
    return Rendered(result.stdout, documents)


class RenderError(Exception):
    """helm refused the values: the message is helm's own."""
