"""compose.yaml cannot run here (no Docker engine); check it against the spec and our defaults."""

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from patterns import config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(
    ("service", "default_url", "default_port"),
    [
        ("redis", "redis://127.0.0.1:6379/0", 6379),
        ("rabbitmq", "amqp://guest:guest@127.0.0.1:5672/", 5672),
    ],
)
def test_each_broker_publishes_the_default_port_on_loopback_only(
    service: str, default_url: str, default_port: int
) -> None:
    spec = COMPOSE["services"][service]
    assert re.fullmatch(r"[a-z]+:\d+\.\d+\.\d+[\w.-]*", spec["image"]), "pin the image version"
    ports = spec["ports"]
    assert all(port.startswith("127.0.0.1:") for port in ports), "publish on loopback only"
    assert f"127.0.0.1:{default_port}:{default_port}" in ports
    assert urlsplit(default_url).port == default_port
    assert spec["healthcheck"]["test"][0] == "CMD"
    assert {"interval", "timeout", "retries"} <= set(spec["healthcheck"])


def test_the_defaults_of_config_are_the_compose_brokers(monkeypatch) -> None:
    # config reads the environment at import: look at the defaults it falls back to
    source = (ROOT / "patterns" / "config.py").read_text()
    assert '"redis://127.0.0.1:6379/0"' in source
    assert '"amqp://guest:guest@127.0.0.1:5672/"' in source
    assert set(COMPOSE["services"]) == {"redis", "rabbitmq"}
    assert config.SCALE in config.SCALES
