"""compose.yaml starts a pinned, persistent, health-checked Qdrant server, xdretrieve's HTTP
service (built from the Dockerfile) once Qdrant is healthy, and, in the ``cluster`` profile, a
three-node Qdrant cluster with its own xdretrieve service."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NODES = ("qdrant-node1", "qdrant-node2", "qdrant-node3")


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


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def _waits_healthy(service: dict, on: str) -> bool:
    depends = service.get("depends_on") or {}
    return isinstance(depends, dict) and (depends.get(on) or {}).get(
        "condition") == "service_healthy"


def test_default_services_have_no_profile(compose: dict) -> None:
    services = compose["services"]
    assert {"qdrant", "xdretrieve"} <= set(services)
    assert not services["qdrant"].get("profiles") and not services["xdretrieve"].get("profiles")


def test_xdretrieve_service_serves_the_qdrant_service(compose: dict) -> None:
    service = compose["services"]["xdretrieve"]
    build = service["build"]
    assert (build if isinstance(build, str) else build.get("context", ".")) == "."
    command = _command(service)
    assert command[:1] == ["serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--url") + 1] == "http://qdrant:6333"
    assert _waits_healthy(service, "qdrant")
    assert 8000 in {_container_port(p) for p in service.get("ports", [])}
    assert {"XDR_SHARDS", "XDR_REPLICAS"} <= set(_env(service))
    assert (service.get("healthcheck") or {}).get("test")
    assert service.get("restart") == "unless-stopped"


def test_dockerfile_installs_cpu_torch_then_the_serve_extra() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    torch = text.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torch < text.index('pip install ".[serve]"')
    assert 'ENTRYPOINT ["xdretrieve"]' in text
    assert 'CMD ["serve", "--host", "0.0.0.0", "--url", "http://qdrant:6333"]' in text


def _sent_to_docker(path: str, rules: list[str]) -> bool:
    """Whether ``path`` (relative to the build context) is in the context: the last
    .dockerignore rule that matches it or a folder above it decides (``!`` keeps)."""
    parts = path.split("/")
    sent = True
    for rule in rules:
        keep = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        if any(fnmatch.fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
            sent = keep
    return sent


def test_build_context_is_what_the_dockerfile_copies() -> None:
    """Without a .dockerignore, `docker compose up` sends the whole folder to the daemon, the
    quick start's .venv included (gigabytes with torch)."""
    rules = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    copied = [src for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
              if line.startswith("COPY ") for src in line.split()[1:-1]]
    assert copied, "the Dockerfile copies nothing"
    for path in [*copied, "xdretrieve/cli.py", "xdretrieve/demo_data/items.jsonl"]:
        assert _sent_to_docker(path, rules), f"{path} is copied by the Dockerfile but ignored"
    for path in (".venv/lib/python3.11/site-packages/torch/__init__.py", ".git/HEAD",
                 "results/stores/x/items", "shop.xdr/xdretrieve.json",
                 "arts-office.model/weights.npz", "xdretrieve/__pycache__/cli.cpython-311.pyc",
                 "build/lib/xdretrieve/cli.py"):
        assert not _sent_to_docker(path, rules), f"{path} would be sent to the daemon"


def test_every_xdretrieve_service_shares_the_models_and_the_cache(compose: dict) -> None:
    """A store records the path of the model that built it: `finetune --out /models/NAME` in
    one container must be what `serve` loads in another (without it, the service could only
    serve the pretrained encoder's vectors)."""
    declared = compose.get("volumes") or {}
    for name in ("xdretrieve", "xdretrieve-cluster"):
        mounts = dict(reversed(str(v).split(":")[:2]) for v in
                      compose["services"][name].get("volumes", []))
        assert mounts.get("/models") in declared, f"{name}: no named volume at /models"
        assert mounts.get("/home/xdr/.cache/xdretrieve") in declared, f"{name}: no cache volume"
    text = DOCKERFILE.read_text(encoding="utf-8")
    made = re.search(r"mkdir -p /models /home/xdr/\.cache/xdretrieve\s*\\\s*"
                     r"&& chown -R xdr:xdr /models /home/xdr/\.cache", text)
    assert made and made.start() < text.index("USER xdr"), "a new volume takes its mount point's owner"


def test_cluster_profile_is_three_bootstrapped_nodes(compose: dict) -> None:
    services = compose["services"]
    declared = compose.get("volumes") or {}
    for name in NODES:
        node = services[name]
        assert node.get("profiles") == ["cluster"]
        assert node["image"] == services["qdrant"]["image"]
        assert _env(node).get("QDRANT__CLUSTER__ENABLED") == "true"
        assert (node.get("healthcheck") or {}).get("test")
        command = _command(node)
        assert command[0] == "./qdrant"
        assert command[command.index("--uri") + 1] == f"http://{name}:6335"
        storage = [str(v).split(":")[0] for v in node.get("volumes", [])
                   if str(v).endswith(":/qdrant/storage")]
        assert storage and storage[0] in declared, f"{name} has no named storage volume"
    assert "--bootstrap" not in _command(services["qdrant-node1"])
    for name in NODES[1:]:
        command = _command(services[name])
        assert command[command.index("--bootstrap") + 1] == "http://qdrant-node1:6335"
        assert _waits_healthy(services[name], "qdrant-node1") or _waits_healthy(
            services[name], "qdrant-node2")
    volumes = [str(v).split(":")[0] for n in NODES for v in services[n].get("volumes", [])]
    assert len(set(volumes)) == 3, "each node needs its own storage"


def test_cluster_profile_has_its_own_xdretrieve_with_shards_and_replicas(compose: dict) -> None:
    services = compose["services"]
    service = services["xdretrieve-cluster"]
    assert service.get("profiles") == ["cluster"]
    command = _command(service)
    assert command[command.index("--url") + 1] == "http://qdrant-node1:6333"
    assert all(_waits_healthy(service, n) for n in NODES)
    env = _env(service)
    shards = re.fullmatch(r"\$\{XDR_SHARDS:-(\d+)\}", env["XDR_SHARDS"])
    replicas = re.fullmatch(r"\$\{XDR_REPLICAS:-(\d+)\}", env["XDR_REPLICAS"])
    assert shards and replicas, env
    assert int(shards[1]) >= len(NODES) and 2 <= int(replicas[1]) <= len(NODES)
    # no host port clashes between the default services and the profile's
    published = [str(p).rsplit(":", 1)[0] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), published


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.parametrize("profile", [[], ["--profile", "cluster"]], ids=["default", "cluster"])
def test_docker_compose_accepts_the_file(profile: list[str]) -> None:
    if not _docker_compose_available():
        pytest.skip("docker compose is not available; the YAML checks above still ran")
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), *profile, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=COMPOSE.parent,
    )
    assert done.returncode == 0, done.stderr
