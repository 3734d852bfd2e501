"""The scan pipeline on a local folder with a tiny random-weight model: verdicts, masks, reasons, idempotence."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from gamma.inference import Detector, TorchBackend
from gamma.weights import Checkpoint
from worker.db import Image, Result, ScanItem
from worker.masks import decode_png
from worker.outcome import Outcome
from worker.pipeline import classify_chunk, mark_failed, run_chunk
from worker.records import scan_summary
from worker.runtime import Runtime
from worker.scans import list_into_scan, open_scan
from worker.settings import Settings
from worker.storage import LocalSource, ObjectRef, StorageUnavailable

MAX_BYTES = 150_000
VERDICTS = {"real", "ai-generated", "manipulated", "needs-review"}
EXPECTED_REASONS = {
    "tiny.png": "too-small",  # a side under gamma.tiling.MIN_SIDE (64 px)
    "empty.jpg": "empty",
    "notes.jpg": "undecodable",
    "cut.jpg": "truncated",
    "huge.png": "too-many-bytes",
    "gone.jpg": "missing",
}


def _encode(array: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_images(folder: Path) -> dict[str, bytes]:
    """Three decodable images (one stored twice), and one of each kind of bad input."""
    rng = np.random.default_rng(0)
    photo = _encode(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), "JPEG", quality=90)
    files = {
        "a.jpg": photo,
        "nested/b.png": _encode(rng.integers(0, 255, (80, 80, 4), dtype=np.uint8), "PNG"),
        "nested/c.webp": _encode(rng.integers(0, 255, (70, 66, 3), dtype=np.uint8), "WEBP"),
        "tiny.png": _encode(rng.integers(0, 255, (63, 200, 3), dtype=np.uint8), "PNG"),
        "nested/copy-of-a.jpg": photo,
        "empty.jpg": b"",
        "notes.jpg": b"these are not the pixels you are looking for\n" * 10,
        "cut.jpg": _encode(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), "JPEG")[:3000],
        "huge.png": _encode(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8), "PNG"),
        "gone.jpg": photo[:-1] + b"\0",
    }
    assert len(files["huge.png"]) > MAX_BYTES
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def backend(tiny_checkpoint: Checkpoint) -> TorchBackend:
    c = tiny_checkpoint
    return TorchBackend(c.model, c.config, c.name, c.version, max_batch_size=4)


def make_runtime(folder: Path, backend: TorchBackend) -> Runtime:
    settings = Settings(
        db_url=f"sqlite:///{folder / 'gamma.db'}", masks_url=str(folder / "masks"), max_bytes=MAX_BYTES, chunk_size=4
    )
    return Runtime.create(settings, backend=backend)


@dataclass
class Scanned:
    runtime: Runtime
    scan_id: int
    source_uri: str
    files: dict[str, bytes]
    outcomes: list[Outcome]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory, backend: TorchBackend) -> Iterator[Scanned]:
    """One scan of the folder as gamma-scan runs it; gone.jpg is deleted between listing and fetching."""
    root = tmp_path_factory.mktemp("pipeline")
    files = write_images(root / "images")
    runtime = make_runtime(root, backend)
    source = LocalSource(root / "images")
    scan_id = open_scan(runtime.sessions, source, backend.model_name)
    outcomes: list[Outcome] = []

    def dispatch(chunk: list[ObjectRef]) -> None:
        (root / "images" / "gone.jpg").unlink(missing_ok=True)
        outcomes.extend(run_chunk(runtime, source.uri, chunk, scan_id))

    assert list_into_scan(runtime.sessions, scan_id, source, runtime.settings.chunk_size, dispatch) == len(files)
    yield Scanned(runtime, scan_id, source.uri, files, outcomes)
    runtime.close()


def test_every_object_gets_exactly_one_outcome_and_bad_input_gets_its_reason(scanned: Scanned) -> None:
    runtime, scan_id, files, outcomes = scanned.runtime, scanned.scan_id, scanned.files, scanned.outcomes
    by_key = {o.key: o for o in outcomes}
    assert sorted(by_key) == sorted(files) and len(outcomes) == len(files)
    assert {key: o.error_reason for key, o in by_key.items() if o.is_error} == EXPECTED_REASONS
    for key in ("a.jpg", "nested/b.png", "nested/c.webp", "nested/copy-of-a.jpg"):
        assert by_key[key].verdict in VERDICTS
    assert by_key["a.jpg"].sha256 == by_key["nested/copy-of-a.jpg"].sha256
    with runtime.sessions() as session:
        summary = scan_summary(session, scan_id)
        assert session.scalar(select(func.count()).select_from(ScanItem)) == len(files)
        assert session.scalar(select(func.count()).select_from(Result)) == len(files) - 1  # a.jpg twice, one result
    assert (summary.status, summary.processed, summary.total) == ("done", len(files), len(files))
    assert summary.error_reasons == {reason: 1 for reason in EXPECTED_REASONS.values()}
    assert sum(summary.verdicts.values()) == len(files)


def test_verdicts_equal_the_in_process_detector_for_the_same_bytes(scanned: Scanned, backend: TorchBackend) -> None:
    judged = [o for o in scanned.outcomes if not o.is_error]
    reference = Detector(backend).classify_bytes([(o.key, scanned.files[o.key]) for o in judged])
    for outcome, expected in zip(judged, reference):
        assert expected.judgement is not None
        assert outcome.verdict == expected.judgement.verdict.value
        assert outcome.probability == pytest.approx(expected.judgement.probability, abs=1e-5)
        assert outcome.ai_area == pytest.approx(expected.judgement.ai_area, abs=1e-3)


# (rows, columns) of each judged image's full-image masks: ceil(H/4) x ceil(W/4) of the image
MASK_SHAPES = {"a.jpg": (16, 24), "nested/b.png": (20, 20), "nested/c.webp": (18, 17), "nested/copy-of-a.jpg": (16, 24)}


def test_masks_are_stored_as_full_image_stride_4_pngs_at_their_urls(scanned: Scanned) -> None:
    outcomes = scanned.outcomes
    judged = [o for o in outcomes if not o.is_error]
    assert {o.key for o in judged} == set(MASK_SHAPES)
    for outcome in judged:
        for url in (outcome.ai_mask_url, outcome.manipulation_mask_url):
            assert url is not None and url.startswith("file://") and outcome.sha256 in url
            assert "/five/" in url  # the coverage mode is part of the content address
            mask = decode_png(Path(urlparse(url).path).read_bytes())
            assert mask.shape == MASK_SHAPES[outcome.key] and mask.dtype == np.uint8
    assert all(o.ai_mask_url is None for o in outcomes if o.is_error)
    inferred = [o for o in judged if o.result_id is None]  # a copy in a later chunk reuses a.jpg's result
    assert all(o.infer_ms and o.infer_ms > 0 and o.fetch_ms is not None for o in inferred)
    assert all(o.fetch_ms is not None for o in judged)


def test_running_the_same_chunk_again_upserts_instead_of_adding_rows(scanned: Scanned) -> None:
    runtime, scan_id, files = scanned.runtime, scanned.scan_id, scanned.files
    with runtime.sessions() as session:
        before = [session.scalar(select(func.count()).select_from(t)) for t in (Image, Result, ScanItem)]
    refs = [ObjectRef(key) for key in sorted(files)]
    run_chunk(runtime, scanned.source_uri, refs, scan_id)  # gone.jpg is still gone: same "missing" row
    run_chunk(runtime, scanned.source_uri, refs[:3], scan_id)
    with runtime.sessions() as session:
        after = [session.scalar(select(func.count()).select_from(t)) for t in (Image, Result, ScanItem)]
        assert scan_summary(session, scan_id).processed == len(files)
    assert after == before


def test_mark_failed_fills_in_only_the_keys_without_a_result(tmp_path: Path, backend: TorchBackend) -> None:
    files = write_images(tmp_path / "images")
    runtime = make_runtime(tmp_path, backend)
    source = LocalSource(tmp_path / "images")
    scan_id = open_scan(runtime.sessions, source, backend.model_name)
    refs = [ObjectRef(key) for key in sorted(files)]
    list_into_scan(runtime.sessions, scan_id, source, 100, lambda chunk: None)
    run_chunk(runtime, source.uri, [ObjectRef("empty.jpg"), ObjectRef("notes.jpg")], scan_id)
    marked = mark_failed(runtime, source.uri, refs, scan_id, "retries-exhausted", "TritonUnavailable: down")
    assert sorted(o.key for o in marked) == sorted(set(files) - {"empty.jpg", "notes.jpg"})
    with runtime.sessions() as session:
        summary = scan_summary(session, scan_id)
    assert summary.status == "done"
    assert summary.error_reasons == {"empty": 1, "undecodable": 1, "retries-exhausted": len(files) - 2}
    runtime.close()


def test_mark_failed_never_overwrites_a_verdict_being_committed(
    tmp_path: Path, backend: TorchBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk records real verdicts for keys while a worker giving up on the same keys (a second lister's copy of
    the chunk) marks the pending ones failed. The giver-up must read "pending" under the scan's lock, after the
    recording commits: before, it read them outside the lock (SQLite: no transaction yet; PostgreSQL: an older
    snapshot), waited for the lock, and overwrote the verdicts with errors."""
    import threading
    import time

    from worker import pipeline

    files = write_images(tmp_path / "images")
    runtime = make_runtime(tmp_path, backend)
    source = LocalSource(tmp_path / "images")
    scan_id = open_scan(runtime.sessions, source, backend.model_name)
    list_into_scan(runtime.sessions, scan_id, source, 100, lambda chunk: None)
    refs = [ObjectRef(key) for key in sorted(files)]
    recorded = threading.Event()
    original = pipeline.record_outcomes

    def record_then_hold(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        if threading.current_thread().name == "recorder":
            recorded.set()
            time.sleep(1.0)  # the transaction stays open: the giver-up runs now
        return result

    monkeypatch.setattr(pipeline, "record_outcomes", record_then_hold)
    recorder = threading.Thread(target=run_chunk, args=(runtime, source.uri, refs, scan_id), name="recorder")
    recorder.start()
    assert recorded.wait(60)
    marked = mark_failed(runtime, source.uri, refs, scan_id, "worker-lost", "gave up")
    recorder.join()
    assert marked == []  # all were judged by the time it could look
    with runtime.sessions() as session:
        summary = scan_summary(session, scan_id)
    assert summary.status == "done" and summary.processed == len(files)
    assert "worker-lost" not in summary.error_reasons
    runtime.close()


class _FlakySource(LocalSource):
    def get(self, ref: ObjectRef, max_bytes: int) -> bytes:
        if ref.key == "nested/b.png":
            raise StorageUnavailable("SlowDown")
        return super().get(ref, max_bytes)


def test_a_storage_outage_raises_for_the_whole_chunk_and_writes_nothing(tmp_path: Path, backend: TorchBackend) -> None:
    files = write_images(tmp_path / "images")
    runtime = make_runtime(tmp_path, backend)
    source = _FlakySource(tmp_path / "images")
    with pytest.raises(StorageUnavailable):
        classify_chunk(runtime, source, [ObjectRef(key) for key in sorted(files)])
    runtime._sources[source.uri] = source
    with pytest.raises(StorageUnavailable):
        run_chunk(runtime, source.uri, [ObjectRef(key) for key in sorted(files)], None)
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 0
    runtime.close()
