"""How the tier finds its backend: needs no backend, so it runs everywhere (CI included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real_lunary.tier import REQUIRED, Backend, KeysFileMissing

KEYS = {name: f"value-of-{name}" for name in REQUIRED}


def test_with_nothing_named_the_reason_names_every_variable_and_the_keys_file() -> None:
    reason = Backend.from_environ({"LUNARY_PRIVATE_KEY_A": "k"})

    assert isinstance(reason, str)
    assert all(name in reason for name in REQUIRED if name != "LUNARY_PRIVATE_KEY_A")
    assert "LUNARY_PRIVATE_KEY_A," not in reason
    assert "LUNARY_KEYS_FILE" in reason


def test_a_keys_file_names_the_backend_and_the_environment_wins(tmp_path: Path) -> None:
    keys = tmp_path / "keys.env"
    lines = [f"{name}={value}" for name, value in KEYS.items()]
    keys.write_text("\n".join([*lines, "LUNARY_JWT_A=jwt", "LUNARY_BACKEND_PID=1", ""]))

    backend = Backend.from_environ(
        {"LUNARY_KEYS_FILE": str(keys), "LUNARY_BACKEND_URL": "http://127.0.0.1:9/"}
    )

    assert backend == Backend(
        url="http://127.0.0.1:9",
        public_key_a=KEYS["LUNARY_PUBLIC_KEY_A"],
        private_key_a=KEYS["LUNARY_PRIVATE_KEY_A"],
        private_key_a2=KEYS["LUNARY_PRIVATE_KEY_A2"],
        private_key_b=KEYS["LUNARY_PRIVATE_KEY_B"],
        jwt_a="jwt",
    )


def test_without_a_jwt_the_backend_has_none() -> None:
    backend = Backend.from_environ(KEYS)

    assert isinstance(backend, Backend)
    assert backend.jwt_a is None


def test_a_keys_file_that_is_not_there_is_an_error_not_a_skip(tmp_path: Path) -> None:
    with pytest.raises(KeysFileMissing, match="LUNARY_KEYS_FILE"):
        Backend.from_environ({"LUNARY_KEYS_FILE": str(tmp_path / "absent.env")})
