"""The shipped default model detects: on the demo samples (images it never trained or validated on) it separates
real photographs from AI-generated images well above chance, with the thresholds its checkpoint carries."""

from __future__ import annotations

import pytest

from gamma import samples
from gamma.inference import Detector
from gamma.verdict import Verdict
from gamma.weights import DEFAULT_MODEL
from training.metrics import roc_auc


@pytest.fixture(scope="module")
def results():
    try:
        sources = samples.sample_sources()
    except SystemExit as missing:
        pytest.skip(f"sample packages not installed: {missing} (make setup installs them)")
    detector = Detector.from_checkpoint(DEFAULT_MODEL)
    real = detector.classify_files(sources["real"])
    ai = detector.classify_files(sources["ai"])
    return real, ai


def _labels_scores(results) -> tuple[list[int], list[float]]:
    real, ai = results
    return [0] * len(real) + [1] * len(ai), [r.judgement.probability for r in [*real, *ai]]


def test_shipped_model_separates_the_samples_above_chance(results) -> None:
    """Regression guard: the at-chance model of before scored ~0.5 here; versions 4 and 5 (the same weights) 0.83 (35 of
    42 pairs), version 6 0.95 (40 of 42), version 7 1.00 (42 of 42, the motorcycle 0.945 just under the lowest AI
    sample's 0.947)."""
    labels, scores = _labels_scores(results)
    assert roc_auc(labels, scores) >= 0.75


def test_shipped_model_meets_the_issue_bar_on_the_samples(results) -> None:
    """Issue 12's "make scan on the samples" bar: ranked well, at most a third in needs-review, at least 70 % right.
    Met since version 7 (0 needs-review, 12 of 13 right); versions 1-6 failed it (a strict xfail until then). A release
    gate: a candidate that passed its validation rule but failed this (a weight average of version 7's run, December 2:
    9 of 13 right, three flower wallpapers in needs-review) was not shipped."""
    labels, scores = _labels_scores(results)
    assert roc_auc(labels, scores) >= 0.85
    real, ai = results
    verdicts = [r.judgement.verdict for r in [*real, *ai]]
    assert verdicts.count(Verdict.NEEDS_REVIEW) <= len(verdicts) // 3
    correct = sum(r.judgement.verdict == Verdict.AI_GENERATED for r in ai)
    correct += sum(r.judgement.verdict in (Verdict.REAL, Verdict.MANIPULATED) for r in real)
    assert correct >= 0.7 * len(verdicts)


@pytest.mark.xfail(
    strict=True,
    reason="not met yet: versions 7 and 8 call scikit-image's motorcycle (a studio product shot) ai-generated (0.945; "
    "version 8's calibrated mask thresholds made version 7's `manipulated` sunset `real`; training/MODEL_CARD.md); "
    "a model that gets every sample right turns this into a failure to remove",
)
def test_shipped_model_gets_every_sample_right(results) -> None:
    """The AI samples `ai-generated`, the real photographs `real`: what a user of `make scan` expects."""
    real, ai = results
    assert all(r.judgement.verdict == Verdict.AI_GENERATED for r in ai)
    assert all(r.judgement.verdict == Verdict.REAL for r in real)
