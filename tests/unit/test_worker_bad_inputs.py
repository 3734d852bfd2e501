"""A corpus of >= 40 bad and odd files through ``gamma-scan`` on a local folder: one row each, the right reason.

The model is the counting fake (what is tested is everything around it: listing, fetching, limits, decoding,
bookkeeping). Two objects are deleted after the listing saw them, just before their fetch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

import worker.pipeline
import worker.runtime
from tests.fixtures.bad_inputs import BIG_BYTES, VERDICT, cases, write_folder
from tests.fixtures.fake_backend import CountingBackend
from worker.cli import scan
from worker.db import Result, Scan, ScanItem, make_engine, session_factory
from worker.outcome import unread_content_id
from worker.runtime import Runtime
from worker.settings import Settings
from worker.storage import LocalSource, ObjectRef


def test_every_bad_or_odd_file_gets_exactly_one_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = cases()
    assert len(corpus) >= 40
    folder = tmp_path / "corpus"
    write_folder(folder, corpus)
    assert (folder / "bad/huge-80MB.jpg").stat().st_size == BIG_BYTES
    doomed = {case.key for case in corpus if case.delete_before_fetch}
    backend = CountingBackend()
    monkeypatch.setattr(worker.runtime, "make_backend", lambda settings: backend)
    original_fetch = worker.pipeline._fetch
    big_reads: list[str] = []

    def fetch_after_deleting(source: LocalSource, ref: ObjectRef, max_bytes: int):  # type: ignore[no-untyped-def]
        if ref.key in doomed:
            (folder / ref.key).unlink()  # listed (it has an ETag), gone before the fetch
        if ref.key == "bad/huge-80MB.jpg":
            big_reads.append(ref.key)
        return original_fetch(source, ref, max_bytes)

    monkeypatch.setattr(worker.pipeline, "_fetch", fetch_after_deleting)
    db_url = f"sqlite:///{tmp_path / 'gamma.db'}"
    result = CliRunner().invoke(
        scan, [str(folder), "--db", db_url, "--json", "--masks", str(tmp_path / "masks"), "--chunk-size", "8"]
    )
    assert result.exit_code == 0, result.output  # no wall-clock bound: the suite must pass on a busy machine

    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(line["key"] for line in lines) == sorted(case.key for case in corpus)
    engine = make_engine(db_url)
    with session_factory(engine)() as session:
        rows = session.execute(select(ScanItem.key, Result).join(Result, Result.id == ScanItem.result_id)).all()
        scan_row = session.scalars(select(Scan)).one()
    engine.dispose()
    by_key = {key: row for key, row in rows}
    assert len(rows) == len(by_key) == len(corpus)  # exactly one row per file
    for case in corpus:
        row = by_key[case.key]
        if case.expected == VERDICT:
            assert row.verdict != "error", (case.key, row.error_reason, row.error_detail)
            assert row.ai_mask_url and row.manipulation_mask_url
        else:
            assert (row.verdict, row.error_reason) == ("error", case.expected), (case.key, row.error_detail)
    assert (scan_row.status, scan_row.total, scan_row.processed) == ("done", len(corpus), len(corpus))
    assert scan_row.errors == sum(case.expected != VERDICT for case in corpus)

    # The 80 MB object was refused on its size: never read, so its identity is its location, not its bytes.
    huge = by_key["bad/huge-80MB.jpg"]
    assert huge.sha256 == unread_content_id((folder / "bad/huge-80MB.jpg").resolve().as_uri(), "too-many-bytes")
    assert big_reads == ["bad/huge-80MB.jpg"]
    assert by_key["odd/copy of plain.jpg"].id == by_key["odd/plain.jpg"].id  # same bytes, one result
    valid = sum(case.expected == VERDICT for case in corpus)
    assert backend.images == valid - 1  # the copy was not inferred again


def test_keys_that_leave_the_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "inside").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"outside the scanned folder")
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'gamma.db'}", masks_url=str(tmp_path / "masks"))
    runtime = Runtime.create(settings, backend=CountingBackend())
    refs = [ObjectRef("../secret.jpg"), ObjectRef("a/../../secret.jpg"), ObjectRef("/etc/hostname")]
    outcomes = worker.pipeline.run_chunk(runtime, LocalSource(tmp_path / "inside").uri, refs, None)
    assert [o.error_reason for o in outcomes] == ["outside-root"] * 3
    runtime.close()
