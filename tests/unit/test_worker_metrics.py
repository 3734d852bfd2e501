"""The worker's Prometheus metrics, scraped over real HTTP from ``worker.metrics.serve`` after a small scan."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.fake_backend import CountingBackend
from tests.fixtures.services import free_port
from worker import metrics
from worker.pipeline import run_chunk
from worker.runtime import Runtime
from worker.scans import list_into_scan, open_scan
from worker.settings import Settings
from worker.storage import LocalSource, ObjectRef


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_and_histograms_after_a_small_scan(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(5):
        Image.new("RGB", (70, 64 + index), (40 * index, 30, 90)).save(folder / f"{index}.png")
    (folder / "text.jpg").write_bytes(b"hello")
    (folder / "empty.png").write_bytes(b"")
    backend = CountingBackend(max_batch_size=2)
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'gamma.db'}", masks_url=str(tmp_path / "masks"), chunk_size=4)
    runtime = Runtime.create(settings, backend=backend)
    port = free_port()
    server, thread = metrics.serve(port, "127.0.0.1")
    try:
        before = scrape(port)
        source = LocalSource(folder)
        scan_id = open_scan(runtime.sessions, source, backend.model_name)
        outcomes = []

        def dispatch(chunk: list[ObjectRef]) -> None:
            outcomes.extend(run_chunk(runtime, source.uri, chunk, scan_id))

        list_into_scan(runtime.sessions, scan_id, source, settings.chunk_size, dispatch)
        after = scrape(port)
    finally:
        server.shutdown()
        thread.join(5)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    verdicts = {o.verdict for o in outcomes}
    assert sum(delta("gamma_images_total", verdict=v) for v in verdicts) == 7
    assert delta("gamma_images_total", verdict="error") == 2
    assert delta("gamma_image_errors_total", reason="undecodable") == 1
    assert delta("gamma_image_errors_total", reason="empty") == 1
    assert delta("gamma_fetch_seconds_count") == 7
    assert delta("gamma_preprocess_seconds_count") == 7
    # Listed in order 0-4.png, empty.png, text.jpg; chunks of 4, batches of at most 2: (2 + 2), then (1).
    assert delta("gamma_inference_batch_size_count") == backend.calls == 3
    assert delta("gamma_inference_batch_size_sum") == 5
    assert delta("gamma_inference_batch_size_bucket", le="1.0") == 1
    assert delta("gamma_inference_seconds_count") == 3

    run_chunk(runtime, source.uri, [ObjectRef("0.png", "", -1)], scan_id)  # the same bytes: reused
    assert backend.calls == 3
