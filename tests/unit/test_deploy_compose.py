"""deploy/docker-compose.yml: ``docker compose config`` when a compose plugin works here, and always a schema
check with PyYAML: services, images, GPU reservation, volumes, and env var names that worker/settings.py reads."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.settings import ENV_PREFIX, Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
SERVICES = {"redis", "tritonserver", "postgres", "minio", "worker", "beat", "flower", "prometheus"}
CELERY_APP_SERVICES = ("worker", "beat", "flower")
SECRETS = {"POSTGRES_PASSWORD": "pw", "MINIO_ROOT_USER": "user", "MINIO_ROOT_PASSWORD": "secretsecret"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_services_and_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= SERVICES
    assert services["tritonserver"]["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert services["redis"]["image"].startswith("redis:") and services["postgres"]["image"].startswith("postgres:")
    assert services["minio"]["image"].startswith("minio/minio")
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    for name in CELERY_APP_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile.worker" and service["image"]
        assert service["command"][:3] == ["celery", "-A", "worker.app"]
    assert "--pool=prefork" in services["worker"]["command"]
    assert services["beat"]["command"][3] == "beat" and services["beat"]["deploy"]["replicas"] == 1
    assert services["flower"]["command"][3] == "flower"
    assert "--appendonly" in services["redis"]["command"]


def test_triton_gets_a_gpu_and_the_model_repository(compose: dict[str, Any]) -> None:
    triton = compose["services"]["tritonserver"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "../model_repository:/models:ro" in triton["volumes"]
    assert "--model-repository=/models" in triton["command"]
    assert (COMPOSE.parent / "../model_repository").resolve().is_dir()


def test_named_volumes_are_declared_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"


def test_env_var_names_match_worker_settings(compose: dict[str, Any]) -> None:
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    seen: set[str] = set()
    for name, service in compose["services"].items():
        for variable in _env(service):
            if variable.startswith(ENV_PREFIX):
                assert variable in known, f"{name}: {variable} is not a worker.settings field"
                seen.add(variable)
    assert {"GAMMA_DB_URL", "GAMMA_BROKER_URL", "GAMMA_TRITON_URL", "GAMMA_MASKS_URL", "GAMMA_S3_ENDPOINT_URL"} <= seen
    worker = _env(compose["services"]["worker"])
    assert worker["GAMMA_BROKER_URL"] == "redis://redis:6379/0" and worker["GAMMA_TRITON_URL"] == "tritonserver:8001"
    assert worker["GAMMA_DB_URL"].startswith("postgresql://") and "@postgres:5432/" in worker["GAMMA_DB_URL"]
    assert worker["GAMMA_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert worker["PROMETHEUS_MULTIPROC_DIR"] in compose["services"]["worker"]["tmpfs"]
    # Values that do not depend on secrets must make a valid Settings (e.g. visibility timeout vs limits).
    plain = {k: v for k, v in worker.items() if k.startswith(ENV_PREFIX) and "${" not in v}
    assert Settings.from_env(plain).metrics_port == 9100
    assert _env(compose["services"]["beat"])["GAMMA_SCHEDULE"] == "/etc/gamma/schedule.toml"


def test_secrets_come_from_the_environment_not_the_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for variable in SECRETS:
        assert re.search(r"\$\{" + variable + r":\?", text), variable  # required, no default
    for name, service in compose["services"].items():
        for variable, value in _env(service).items():
            if re.search("PASSWORD|SECRET|_KEY", variable) or variable == "GAMMA_DB_URL":
                assert "${" in value, f"{name}: {variable} is written into the file"


def test_prometheus_scrapes_every_worker_on_the_metrics_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    workers = jobs["gamma-workers"]["dns_sd_configs"][0]
    port = _env(compose["services"]["worker"])["GAMMA_METRICS_PORT"]
    assert workers["names"] == ["worker"] and str(workers["port"]) == port
    assert jobs["triton"]["static_configs"][0]["targets"] == ["tritonserver:8002"]


def test_the_schedule_file_and_the_dockerfile(compose: dict[str, Any]) -> None:
    from worker.schedule import load_schedule

    assert load_schedule(str(DEPLOY / "schedule.toml"))
    dockerfile = (DEPLOY / "Dockerfile.worker").read_text()
    root = DEPLOY.parent
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (root / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert "torch==2.13.0" in dockerfile and "flower" in dockerfile and "USER " in dockerfile


def test_docker_compose_config_when_available(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no docker compose plugin here ({probe.stderr.strip()[:80]}); schema checked with PyYAML")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
