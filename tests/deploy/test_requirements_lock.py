"""requirements.lock, which the image installs, must still satisfy pyproject.toml's ranges."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def pinned_versions(lock: str = "requirements.lock") -> dict[str, str]:
    lines = (ROOT / lock).read_text().splitlines()
    return {canonicalize_name(match[1]): match[2] for line in lines if (match := PIN.match(line))}


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    pins = pinned_versions()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement.specifier}: "
            "run scripts/lock"
        )


def test_the_build_backend_is_pinned_within_its_range() -> None:
    """The image builds its wheel without build isolation, from requirements-build.lock."""
    pins = pinned_versions("requirements-build.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for spec in project["build-system"]["requires"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements-build.lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True)


@pytest.mark.parametrize(
    "lock", ["requirements.lock", "requirements-build.lock", "requirements-test.lock"]
)
def test_every_pin_carries_a_hash(lock: str) -> None:
    """pip then installs in hash-checking mode: a changed file on the index fails the build."""
    text = (ROOT / lock).read_text()
    entries = [entry for entry in re.split(r"\n(?=[A-Za-z])", text) if PIN.match(entry)]
    assert entries
    assert all("--hash=sha256:" in entry for entry in entries)


def test_debian_python_gets_the_backport_redis_needs() -> None:
    """Debian 12's Python is 3.11.2; redis-py needs async-timeout below 3.11.3."""
    assert "async-timeout" in pinned_versions()


def test_the_tests_run_exactly_what_the_image_ships() -> None:
    """scripts/test installs requirements-test.lock: every runtime pin must be the image's."""
    shipped = pinned_versions()
    tested = pinned_versions("requirements-test.lock")
    assert shipped.keys() <= tested.keys()
    assert {name: tested[name] for name in shipped} == shipped, "run scripts/lock"


def test_every_test_dependency_is_pinned_within_its_range() -> None:
    pins = pinned_versions("requirements-test.lock")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["optional-dependencies"]["test"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements-test.lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True)
