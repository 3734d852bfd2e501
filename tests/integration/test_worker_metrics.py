"""Metrics of a real prefork Celery worker (2 children, multiprocess mode) scraped from GAMMA_METRICS_PORT."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from gamma.weights import Checkpoint
from tests.fixtures.services import celery_worker, free_port
from worker.db import Scan, make_engine, session_factory
from worker.settings import Settings
from worker.submit import submit_scan

pytestmark = pytest.mark.integration


def test_prefork_children_are_summed_on_one_port(
    redis_url: str, tiny_checkpoint: Checkpoint, services_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(4):
        Image.new("RGB", (70 + index, 64), (60 * index, 20, 120)).save(folder / f"{index}.png")
    (folder / "notes.jpg").write_bytes(b"not a jpeg")
    port = free_port()
    assert tiny_checkpoint.path is not None
    env = {
        "GAMMA_DB_URL": f"sqlite:///{tmp_path / 'gamma.db'}",
        "GAMMA_BROKER_URL": redis_url,
        "GAMMA_QUEUE": "metrics.scan",
        "GAMMA_MASKS_URL": str(tmp_path / "masks"),
        "GAMMA_MODEL": str(tiny_checkpoint.path),
        "GAMMA_CHUNK_SIZE": "1",
        "GAMMA_TORCH_THREADS": "1",
        "GAMMA_PREPROCESS_WORKERS": "1",
        "GAMMA_METRICS_PORT": str(port),
        "GAMMA_METRICS_HOST": "127.0.0.1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "counter_stale.db").write_bytes(b"")  # a previous run's file: must be cleared
    settings = Settings.from_env(env)
    engine = make_engine(settings.db_url)
    with celery_worker(env, services_dir, concurrency=2, queue="metrics.scan"):
        scan_id = submit_scan(settings, str(folder)).scan_id
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with session_factory(engine)() as session:
                scan = session.get(Scan, scan_id)
                if scan is not None and scan.status == "done":
                    break
            time.sleep(0.3)
        else:
            raise AssertionError("scan not done in 120 s")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    engine.dispose()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    images = {labels: v for (name, labels), v in samples.items() if name == "gamma_images_total"}
    assert sum(images.values()) == 5 and images[(("verdict", "error"),)] == 1
    assert samples[("gamma_image_errors_total", (("reason", "undecodable"),))] == 1
    assert samples[("gamma_inference_batch_size_count", ())] == 4  # chunks of 1: one call per image
    assert samples[("gamma_fetch_seconds_count", ())] == 5
    assert not (tmp_path / "prom" / "counter_stale.db").exists()
