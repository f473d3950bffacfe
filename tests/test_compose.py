"""docker-compose.yml: validated by Docker Compose itself (`config` needs no engine), then checked for the properties
the multi-machine set-up relies on (docs/architecture.md#the-studio). Without a compose binary these tests fail, never skip."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml  # PyYAML, declared in the dev extras

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {"redis", "postgres", "migrate", "web", "worker", "flower"}
INSTALL = ("tests/test_compose.py needs Docker Compose to validate docker-compose.yml (no engine needed): "
           "`apt-get install -y --no-install-recommends docker-compose` (or the `docker compose` plugin)")


def compose_command() -> list[str]:
    """The standalone `docker-compose` (Debian ships 1.29) or the `docker compose` plugin, whichever is installed."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail(INSTALL, pytrace=False)


def compose_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*compose_command(), "-f", str(path), "--project-directory", str(ROOT), "config"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def config() -> dict:
    """The file as Compose resolves it: anchors merged, defaults filled in."""
    result = compose_config(COMPOSE_FILE)
    assert result.returncode == 0, f"docker-compose config rejected docker-compose.yml:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(config: dict) -> dict:
    return config["services"]


def command(service: dict) -> str:
    """Compose 1 prints a command as written, Compose 2 as a list of arguments."""
    cmd = service.get("command", "")
    return shlex.join(cmd) if isinstance(cmd, list) else cmd


def volume_mounts(service: dict) -> dict[str, str]:
    """{target: named volume} from short ("artifacts:/data:rw", Compose 1) or long syntax (Compose 2)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *_ = volume.split(":")
            mounts[target] = source
        elif volume.get("type", "volume") == "volume":
            mounts[volume["target"]] = volume["source"]
    return mounts


def seconds(duration: str | int) -> float:
    """A Compose duration ("60s", "1m", "1m0s") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"unreadable duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_file_has_no_obsolete_version_key():
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert "version" not in raw, "the Compose Specification has no top-level `version:`"
    assert set(raw["services"]) == SERVICES


def test_the_six_services_exist(services):
    assert set(services) == SERVICES


def test_redis_persists_the_queue(services, config):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    args = shlex.split(command(redis))
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    data = volume_mounts(redis)["/data"]
    assert data in config["volumes"], "redis's AOF must live in a named volume"


def test_postgres_has_its_database_and_a_volume(services, config):
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    env = postgres["environment"]
    assert env["POSTGRES_USER"] == env["POSTGRES_PASSWORD"] == env["POSTGRES_DB"] == "studio"
    assert volume_mounts(postgres)["/var/lib/postgresql/data"] in config["volumes"]


@pytest.mark.parametrize(("name", "probe"), [("redis", "redis-cli ping"), ("postgres", "pg_isready -U studio"),
                                             ("web", "http://127.0.0.1:7860/")])
def test_healthchecks(services, name, probe):
    test = services[name]["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    assert probe in " ".join(test[1:])
    if name == "web":
        assert test[1] == "python" and "urllib" in test[-1], "slim images have no curl: probe with Python"


def test_migrate_is_a_one_off_db_upgrade(services):
    migrate = services["migrate"]
    assert command(migrate) == "distill-studio db upgrade"
    assert str(migrate["restart"]) == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["web", "worker"])
def test_web_and_worker_wait_for_the_migration_and_redis(services, name):
    depends = services[name]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["redis"]["condition"] == "service_healthy"


def test_web_serves_the_studio_without_a_worker(services):
    web = services["web"]
    assert command(web) == "distill-studio up --host 0.0.0.0 --no-worker"
    assert [(str(p["published"]), p["target"]) for p in web["ports"]] == [("7860", 7860)]


def test_worker_reserves_one_gpu_and_can_scale(services):
    worker = services["worker"]
    assert command(worker) == "distill-studio worker --concurrency 1"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia" and devices[0]["count"] == 1 and devices[0]["capabilities"] == ["gpu"]
    assert worker["environment"]["STUDIO_DEVICE"] == "cuda"
    # `--scale worker=N` needs replicas without a fixed name or host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert seconds(worker["stop_grace_period"]) >= 60, "a worker needs time to checkpoint after SIGTERM"


def test_studio_services_share_one_artifact_volume_and_settings(services, config):
    images = {services[name]["image"] for name in ("migrate", "web", "worker")}
    assert len(images) == 1, "migrate, web and worker run the project image"
    for name in ("migrate", "web", "worker"):
        env = services[name]["environment"]
        assert env["STUDIO_DATABASE_URL"] == "postgresql://studio:studio@postgres:5432/studio"
        assert env["STUDIO_BROKER_URL"] == "redis://redis:6379/0"
        assert {env[k] for k in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")} == {"False", "1"}
        mounts = volume_mounts(services[name])
        assert mounts.get(env["STUDIO_DATA_DIR"]) == "artifacts", f"{name}: the artifact volume at STUDIO_DATA_DIR"
    assert "artifacts" in config["volumes"]


def test_flower_watches_the_redis_broker(services):
    flower = services["flower"]
    assert flower["image"].startswith("mher/flower")
    assert "--broker=redis://redis:6379/0" in command(flower)
    assert [(str(p["published"]), p["target"]) for p in flower["ports"]] == [("5555", 5555)]
    assert "redis" in flower["depends_on"]


BREAKAGES = {
    "undefined service": lambda s: s["worker"]["depends_on"].update(ghost={"condition": "service_started"}),
    "unknown condition": lambda s: s["web"]["depends_on"]["migrate"].update(condition="service_finished"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_compose_rejects_a_broken_copy(tmp_path, breakage):
    """The check can fail: Compose refuses a copy with one deliberate mistake."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    BREAKAGES[breakage](raw["services"])
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(raw))
    result = compose_config(broken)
    assert result.returncode != 0, f"docker-compose config accepted a file with an {breakage}"
    assert ("ghost" if breakage == "undefined service" else "service_finished") in result.stderr


def test_image_installs_every_package():
    """The Dockerfile copies what `pip install .` needs: pyproject, README (the package's readme) and each package."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {part.rstrip("/") for line in dockerfile.splitlines() if line.startswith("COPY")
              for part in line.split()[1:-1] if not part.startswith("--")}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {"pyproject.toml", "README.md"} | {p.rstrip("*") for p in packages} <= copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "studio-data"} <= {line.strip("/") for line in ignored}
