"""compose.yaml starts a pinned, persistent, health-checked Qdrant server."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def qdrant(compose: dict) -> dict:
    services = compose.get("services") or {}
    assert "qdrant" in services, f"no qdrant service, only {sorted(services)}"
    return services["qdrant"]


def _container_port(entry: object) -> int | None:
    """The container port of a ports entry, short ("[ip:]host:container[/proto]") or long form."""
    if isinstance(entry, dict):
        return int(entry["target"])
    text = str(entry).split("/")[0]
    return int(text.rsplit(":", 1)[-1])


def test_no_obsolete_version_key(compose: dict) -> None:
    assert "version" not in compose


def test_official_image_with_pinned_version(qdrant: dict) -> None:
    image = qdrant["image"]
    name, sep, tag = image.partition(":")
    assert name in ("qdrant/qdrant", "docker.io/qdrant/qdrant"), image
    assert sep and tag, f"image {image!r} is not pinned to a tag"
    assert tag != "latest"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"tag {tag!r} is not a release version"


def test_publishes_http_and_grpc_ports(qdrant: dict) -> None:
    published = {_container_port(p) for p in qdrant.get("ports", [])}
    assert 6333 in published
    assert 6334 in published


def test_storage_is_a_declared_named_volume(compose: dict, qdrant: dict) -> None:
    declared = compose.get("volumes") or {}
    named = {}
    for v in qdrant.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type", "volume") == "volume":
                named[v["target"]] = v.get("source")
        else:
            source, _, rest = str(v).partition(":")
            target = rest.split(":")[0]
            if not source.startswith((".", "/", "~")):
                named[target] = source
    assert "/qdrant/storage" in named, f"no named volume at /qdrant/storage: {qdrant['volumes']}"
    assert named["/qdrant/storage"] in declared


def test_healthcheck_has_a_test_command(qdrant: dict) -> None:
    check = qdrant.get("healthcheck") or {}
    assert not check.get("disable", False)
    test = check.get("test")
    assert test, "healthcheck without a test command"
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, test


def test_restarts_unless_stopped(qdrant: dict) -> None:
    assert qdrant.get("restart") == "unless-stopped"


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_docker_compose_accepts_the_file() -> None:
    if not _docker_compose_available():
        pytest.skip("docker compose is not available; the YAML checks above still ran")
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=COMPOSE.parent,
    )
    assert done.returncode == 0, done.stderr
