"""Contract v2 in the worker: a scan runs under one coverage mode (``--coverage``, else ``GAMMA_COVERAGE``) that
travels with its chunks, records which tiles were seen, stores full-image masks, and reuses only results seen
under the same mode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from click.testing import CliRunner, Result
from kombu import Connection
from PIL import Image
from sqlalchemy import select

from gamma.cli import main as classify
from gamma.tiling import plan_tiles
from tests.fixtures.fake_backend import CountingBackend
from worker import runtime as runtime_module
from worker import tasks
from worker.app import TASK_NAME, app, encode_refs
from worker.cli import scan, submit
from worker.db import Result as ResultRow
from worker.db import Scan, ScanItem, make_engine, session_factory
from worker.masks import decode_png
from worker.outcome import Outcome
from worker.pipeline import run_chunk
from worker.runtime import Runtime
from worker.scans import list_into_scan, open_scan
from worker.settings import Settings
from worker.storage import LocalSource, ObjectRef
from worker.submit import submit_scan

WIDE = (1600, 700)  # width x height: a 4 x 2 grid of 512-px tiles; five sees 5 of them, centre 1
MASK_SHAPE = (175, 400)  # ceil(700 / 4) x ceil(1600 / 4): the whole image at stride 4
GREY = 200  # the fake backend's masks are the tiles' first channel, pooled: GREY wherever a tile looked


def _folder(root: Path) -> Path:
    folder = root / "photos"
    folder.mkdir(parents=True)
    Image.new("RGB", WIDE, (GREY, GREY, GREY)).save(folder / "wide.png")
    Image.new("RGB", (100, 80), (90, 90, 90)).save(folder / "small.png")  # one tile whatever the mode
    return folder


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> CountingBackend:
    """What gamma-scan loads: the counting stand-in (it records the tile shapes it is given)."""
    backend = CountingBackend(model_name="gamma-fake")
    monkeypatch.setattr(runtime_module, "make_backend", lambda settings: backend)
    monkeypatch.delenv("GAMMA_TRITON_URL", raising=False)
    monkeypatch.delenv("GAMMA_COVERAGE", raising=False)
    return backend


def _scan_json(folder: Path, db: str, masks: Path, *extra: str, env: dict[str, str] | None = None) -> list[dict]:
    args = [str(folder), "--db", db, "--json", "--masks", str(masks), *extra]
    result = CliRunner(env=env).invoke(scan, args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _mask(url: str) -> np.ndarray:
    return decode_png(Path(urlparse(url).path).read_bytes())


def test_gamma_scan_coverage_full_sees_every_tile_and_records_it(tmp_path: Path, fake_model: CountingBackend) -> None:
    db = f"sqlite:///{tmp_path / 'gamma.db'}"
    lines = {line["key"]: line for line in _scan_json(_folder(tmp_path), db, tmp_path / "m", "--coverage", "full")}
    wide = lines["wide.png"]
    assert (wide["coverage"], wide["tiles_seen"], wide["tiles_total"], wide["seen_fraction"]) == ("full", 8, 8, 1.0)
    assert wide["top_tile"] in [list(box) for box in plan_tiles(*WIDE, "full").boxes]
    assert (lines["small.png"]["tiles_seen"], lines["small.png"]["tiles_total"]) == (1, 1)
    assert fake_model.images == 8 + 1 and set(fake_model.shapes) == {(512, 512), (64, 96)}
    mask = _mask(wide["ai_mask_url"])
    assert mask.shape == MASK_SHAPE and (mask > 0).all()  # every pixel seen: no unseen zeros left
    with session_factory(make_engine(db))() as session:
        scan_row = session.scalars(select(Scan)).one()
        rows = session.scalars(select(ResultRow)).all()
    assert scan_row.coverage == "full"
    assert {(r.coverage, r.tiles_seen, r.tiles_total) for r in rows} == {("full", 8, 8), ("full", 1, 1)}
    assert all(r.top_tile is not None and len(r.top_tile) == 4 for r in rows)


def test_gamma_coverage_is_the_default_and_the_option_wins(tmp_path: Path, fake_model: CountingBackend) -> None:
    folder, db = _folder(tmp_path), f"sqlite:///{tmp_path / 'gamma.db'}"
    centre = {line["key"]: line for line in _scan_json(folder, db, tmp_path / "m", env={"GAMMA_COVERAGE": "centre"})}
    wide = centre["wide.png"]
    assert (wide["coverage"], wide["tiles_seen"], wide["tiles_total"]) == ("centre", 1, 8)
    assert wide["seen_fraction"] == pytest.approx(512 * 512 / (WIDE[0] * WIDE[1]), abs=1e-4)
    left, top, right, bottom = (v // 4 for v in plan_tiles(*WIDE, "centre").boxes[0])
    mask = _mask(wide["ai_mask_url"]).copy()
    assert mask.shape == MASK_SHAPE
    assert (mask[top:bottom, left:right] > 0).all()  # the centre tile, stitched where it lies in the image
    mask[top:bottom, left:right] = 0
    assert not mask.any()  # and nothing elsewhere: no tile looked there

    overridden = _scan_json(folder, db, tmp_path / "m", "--coverage", "five", env={"GAMMA_COVERAGE": "centre"})
    assert {line["coverage"] for line in overridden} == {"five"}
    assert next(line for line in overridden if line["key"] == "wide.png")["tiles_seen"] == 5
    with session_factory(make_engine(db))() as session:
        assert session.scalars(select(Scan.coverage).order_by(Scan.id)).all() == ["centre", "five"]


def one_line_error(result: Result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_a_bad_coverage_is_one_line_before_anything_is_recorded_or_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[object] = []
    monkeypatch.setattr(runtime_module, "make_backend", loads.append)
    monkeypatch.delenv("GAMMA_COVERAGE", raising=False)
    folder, db = _folder(tmp_path), tmp_path / "gamma.db"
    common = [str(folder), "--db", f"sqlite:///{db}"]
    runs = [
        CliRunner().invoke(scan, [*common, "--coverage", "most"]),
        CliRunner().invoke(submit, [*common, "--broker", "memory://", "--coverage", "most"]),
        CliRunner(env={"GAMMA_COVERAGE": "most"}).invoke(scan, common),
        CliRunner(env={"GAMMA_COVERAGE": "most"}).invoke(submit, [*common, "--broker", "memory://"]),
        CliRunner().invoke(classify, [str(folder), "--model", "no-such-model", "--coverage", "most"]),
    ]
    for result in runs:
        line = one_line_error(result)
        assert "'most'" in line and "centre|five|full" in line, line
    assert loads == [] and not db.exists()


def _runtime(tmp_path: Path, backend: CountingBackend, coverage: str = "five") -> Runtime:
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'gamma.db'}", masks_url=str(tmp_path / "masks"), coverage=coverage
    )
    return Runtime.create(settings, backend=backend)


def _scan(runtime: Runtime, folder: Path, coverage: str | None = None) -> tuple[int, list[Outcome]]:
    """gamma-scan's loop, with the scan's coverage given to every chunk (None: the runtime's default)."""
    source = LocalSource(folder)
    scan_id = open_scan(runtime.sessions, source, "gamma-fake", coverage or runtime.settings.coverage)
    outcomes: list[Outcome] = []

    def dispatch(chunk: list[ObjectRef]) -> None:
        outcomes.extend(run_chunk(runtime, source.uri, chunk, scan_id, coverage=coverage))

    list_into_scan(runtime.sessions, scan_id, source, 10, dispatch)
    return scan_id, outcomes


def _results(runtime: Runtime, scan_id: int) -> dict[str, ResultRow]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(ScanItem.key, ResultRow)
            .join(ResultRow, ResultRow.id == ScanItem.result_id)
            .where(ScanItem.scan_id == scan_id)
        ).all()
    return {key: row for key, row in rows}


def test_results_are_reused_only_under_the_same_coverage(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    backend = CountingBackend(model_name="gamma-fake")
    runtime = _runtime(tmp_path, backend)
    five, _ = _scan(runtime, folder)
    assert backend.images == 5 + 1
    five_mask = _mask(_results(runtime, five)["wide.png"].ai_mask_url or "")

    backend.images = 0
    full, outcomes = _scan(runtime, folder, "full")
    assert backend.images == 8 + 1  # nothing seen under five stands in for a full look, not even the small image
    assert all(o.result_id is None and o.coverage == "full" for o in outcomes)
    before, after = _results(runtime, five), _results(runtime, full)
    assert {r.coverage for r in before.values()} == {"five"} and {r.coverage for r in after.values()} == {"full"}
    assert {r.id for r in before.values()}.isdisjoint(r.id for r in after.values())
    assert before["wide.png"].ai_mask_url != after["wide.png"].ai_mask_url
    assert np.array_equal(_mask(before["wide.png"].ai_mask_url or ""), five_mask)  # the five scan's masks are intact

    backend.images = 0
    again, outcomes = _scan(runtime, folder, "five")
    assert backend.images == 0 and all(o.result_id is not None for o in outcomes)
    assert {k: r.id for k, r in _results(runtime, again).items()} == {k: r.id for k, r in before.items()}
    reused = next(o for o in outcomes if o.key == "wide.png")
    assert (reused.coverage, reused.tiles_seen, reused.tiles_total) == ("five", 5, 8) and reused.top_tile

    source = LocalSource(folder)
    listed: list[list[ObjectRef]] = []
    centre = open_scan(runtime.sessions, source, "gamma-fake", "centre")
    list_into_scan(runtime.sessions, centre, source, 10, listed.append, skip_known=("gamma-fake", 1, "centre"))
    assert sum(map(len, listed)) == 2  # no result of centre yet: everything is queued at listing time
    listed.clear()
    known = open_scan(runtime.sessions, source, "gamma-fake", "full")
    list_into_scan(runtime.sessions, known, source, 10, listed.append, skip_known=("gamma-fake", 1, "full"))
    assert listed == []  # both known under full: linked at listing time
    runtime.close()


@pytest.fixture
def eager() -> Iterator[None]:
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False
    tasks.use_runtime(None)


def test_the_scans_coverage_travels_with_its_chunks_whatever_the_workers_default(
    tmp_path: Path, eager: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _folder(tmp_path)
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'gamma.db'}", broker_url="memory://", queue="coverage.test", coverage="full"
    )
    submitted = submit_scan(settings, str(folder))
    with Connection("memory://") as connection:
        queue = connection.SimpleQueue("coverage.test")
        message = queue.get(timeout=1)
        message.ack()
        queue.close()
    assert message.headers["task"] == TASK_NAME
    args, kwargs, _ = message.decode()
    assert kwargs["coverage"] == "full"

    backend = CountingBackend(model_name="gamma-fake")
    worker = _runtime(tmp_path, backend, coverage="centre")  # this worker's GAMMA_COVERAGE differs
    tasks.use_runtime(worker)
    assert tasks.scan_chunk.apply(args=args, kwargs=kwargs).successful()
    assert backend.images == 8 + 1
    results = _results(worker, submitted.scan_id)
    assert {(r.coverage, r.tiles_seen) for r in results.values()} == {("full", 8), ("full", 1)}
    with worker.sessions() as session:
        assert session.get(Scan, submitted.scan_id).coverage == "full"  # type: ignore[union-attr]

    # A chunk that gives up records its images under its scan's mode too (the next full scan must retry them).
    refs = [ObjectRef("wide.png"), ObjectRef("small.png")]
    scan_id = open_scan(worker.sessions, LocalSource(folder), "gamma-fake", "full")

    def bug(*args: object, **kwargs: object) -> list[Outcome]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(tasks, "run_chunk", bug)
    failed = tasks.scan_chunk.apply(
        args=[scan_id, LocalSource(folder).uri, encode_refs(refs)], kwargs={"coverage": "full"}
    )
    assert failed.failed()
    errors = _results(worker, scan_id)
    assert {(r.error_reason, r.coverage) for r in errors.values()} == {("internal-error", "full")}
    worker.close()


def test_resume_goes_on_with_the_scans_own_coverage(tmp_path: Path, fake_model: CountingBackend) -> None:
    folder, db = _folder(tmp_path), f"sqlite:///{tmp_path / 'gamma.db'}"
    engine = make_engine(db)
    runtime = Runtime.create(Settings(db_url=db, masks_url=str(tmp_path / "m")), backend=fake_model)
    scan_id = open_scan(runtime.sessions, LocalSource(folder), "gamma-fake", "full")
    with runtime.sessions.begin() as session:
        session.get(Scan, scan_id).status = "interrupted"  # type: ignore[union-attr]
    runtime.close()

    line = one_line_error(CliRunner().invoke(scan, ["--resume", str(scan_id), "--db", db, "--coverage", "centre"]))
    assert f"scan {scan_id} runs with coverage full" in line
    result = CliRunner(env={"GAMMA_COVERAGE": "centre"}).invoke(
        scan, ["--resume", str(scan_id), "--db", db, "--json", "--masks", str(tmp_path / "m")]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert {line["coverage"] for line in lines} == {"full"} and len(lines) == 2
    with session_factory(engine)() as session:
        row = session.get(Scan, scan_id)
        assert row is not None and (row.status, row.coverage) == ("done", "full")
    engine.dispose()
