"""Issue 11: one home for the reason codes (worker.reasons.Reason), with whether each may be reused."""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from deploy.triton_client import TritonError, TritonUnavailable
from gamma.preprocess import REJECTION_REASONS
from worker import records, tasks
from worker.app import decode_refs, encode_refs
from worker.reasons import NOT_REUSABLE_REASONS, Reason
from worker.storage import ObjectRef


def test_every_preprocessing_reason_is_a_reusable_reason() -> None:
    assert {Reason(code) for code in REJECTION_REASONS} == {reason for reason in Reason if reason.reusable}


def test_what_the_tasks_record_is_exactly_what_records_never_reuses_of_the_run() -> None:
    produced = {
        tasks.failure_reason(exc)
        for exc in (TritonUnavailable("down"), SoftTimeLimitExceeded(), TimeLimitExceeded(1), TritonError("x"),
                    RuntimeError("bug"))
    }  # fmt: skip
    assert produced | {Reason.WORKER_LOST} == {
        Reason.RETRIES_EXHAUSTED, Reason.TIME_LIMIT, Reason.BACKEND_ERROR, Reason.INTERNAL_ERROR, Reason.WORKER_LOST
    }  # fmt: skip
    assert all(not reason.reusable for reason in produced)
    assert records.NOT_REUSABLE_REASONS is NOT_REUSABLE_REASONS
    assert set(NOT_REUSABLE_REASONS) == {reason.value for reason in Reason if not reason.reusable}


def test_a_listing_reason_travels_in_the_message() -> None:
    refs = [ObjectRef("a.jpg", "e", 3), ObjectRef("fifo", "f", 0, Reason.NOT_A_FILE, "a FIFO, not a regular file")]
    items = encode_refs(refs)
    assert items[0] == ["a.jpg", "e", 3]  # as before: messages of older producers still decode
    assert decode_refs(items) == refs
    assert decode_refs([["old.jpg", "e", 1]]) == [ObjectRef("old.jpg", "e", 1)]
