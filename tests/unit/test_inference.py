"""The in-process Detector: batching, order, errors per image, verdicts from the checkpoint's thresholds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gamma.inference import Detector, TorchBackend
from gamma.preprocess import preprocess
from gamma.verdict import judge
from gamma.weights import Checkpoint


def _jpeg(seed: int, size: tuple[int, int] = (600, 520)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def detector(tiny_checkpoint: Checkpoint) -> Detector:
    backend = TorchBackend(tiny_checkpoint.model, tiny_checkpoint.config, "gamma-test", 1, max_batch_size=2)
    return Detector(backend)


def test_results_keep_order_and_errors_stay_per_image(detector: Detector) -> None:
    items = [("a", _jpeg(0)), ("bad", b"not an image"), ("b", _jpeg(1)), ("empty", b""), ("c", _jpeg(2))]
    results = detector.classify_bytes(items)
    assert [r.source for r in results] == ["a", "bad", "b", "empty", "c"]
    assert [r.error.reason if r.error else None for r in results] == [None, "undecodable", None, "empty", None]
    for result in (results[0], results[2], results[4]):
        assert result.judgement is not None
        assert result.ai_mask is not None and result.ai_mask.shape == (128, 128) and result.ai_mask.dtype == np.uint8


def test_batched_results_equal_one_at_a_time(detector: Detector) -> None:
    """max_batch_size=2 splits five images into three batches; each equals the image run alone."""
    items = [(str(i), _jpeg(i)) for i in range(5)]
    batched = detector.classify_bytes(items)
    for item, result in zip(items, batched):
        alone = detector.classify_bytes([item])[0]
        assert result.judgement is not None and alone.judgement is not None
        assert result.judgement.probability == pytest.approx(alone.judgement.probability, abs=1e-5)
        assert np.abs(result.ai_mask.astype(int) - alone.ai_mask.astype(int)).max() <= 1


def test_verdict_uses_backend_outputs_and_thresholds(detector: Detector) -> None:
    data = _jpeg(7)
    result = detector.classify_bytes([("x", data)])[0]
    outputs = detector.backend.infer(preprocess(data)[None])
    thresholds = detector.backend.thresholds
    expected = judge(outputs.probability[0], outputs.ai_mask[0], outputs.manipulation_mask[0], thresholds)
    assert result.judgement == expected


def test_unreadable_file_gets_its_own_error(detector: Detector, tmp_path: Path) -> None:
    (tmp_path / "ok.jpg").write_bytes(_jpeg(3))
    results = detector.classify_files([tmp_path / "missing.jpg", tmp_path / "ok.jpg"])
    assert results[0].error is not None and results[0].error.reason == "unreadable"
    assert results[0].to_dict()["verdict"] == "error"
    assert results[1].judgement is not None and results[1].source.endswith("ok.jpg")
