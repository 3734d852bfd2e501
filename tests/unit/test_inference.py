"""The in-process Detector: batching, order, errors per image, verdicts from the checkpoint's thresholds, bounded
file reading, and the ONNX Runtime backend against the torch one."""

from __future__ import annotations

import builtins
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deploy.onnx_export import MASK_MAX_STEP, PROBABILITY_ATOL
from gamma.config import preset
from gamma.inference import Detector, OnnxBackend, TorchBackend, read_limited
from gamma.model import GammaModel
from gamma.preprocess import ImageRejected, PreprocessLimits, preprocess
from gamma.verdict import Verdict, VerdictThresholds, decide, mask_area
from gamma.weights import Checkpoint, WeightsError, save_checkpoint
from tests.fixtures.models import TINY_EXPORT_THRESHOLDS


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
        # the whole 600x520 image at the masks' stride 4, not one 512x512 tile
        assert result.ai_mask is not None and result.ai_mask.shape == (130, 150) and result.ai_mask.dtype == np.uint8
        assert result.tiles is not None and result.to_dict()["tiles_seen"] == 2


# Five images, three tile shapes: two 512x512 tiles; three 288x192 tiles of three images (batches of 2 and 1 with
# max_batch_size=2); one 96x64 tile.
BATCHED_SIZES = [(600, 520), (300, 200), (310, 220), (300, 200), (100, 70)]


def test_batched_results_equal_one_at_a_time(detector: Detector) -> None:
    """Tiles of several images share batches of at most max_batch_size=2; each image equals itself run alone."""
    items = [(str(i), _jpeg(i, size)) for i, size in enumerate(BATCHED_SIZES)]
    batched = detector.classify_bytes(items)
    for item, result, (width, height) in zip(items, batched, BATCHED_SIZES, strict=True):
        alone = detector.classify_bytes([item])[0]
        assert result.judgement is not None and alone.judgement is not None
        assert result.judgement.probability == pytest.approx(alone.judgement.probability, abs=1e-5)
        assert result.ai_mask.shape == alone.ai_mask.shape == (-(-height // 4), -(-width // 4))
        assert np.abs(result.ai_mask.astype(int) - alone.ai_mask.astype(int)).max() <= 1


def test_verdict_uses_backend_outputs_and_thresholds(detector: Detector) -> None:
    """The verdict from the backend's tile outputs: mean tile logit, areas of the most affected tile."""
    data = _jpeg(7, size=(1100, 700))  # a 3x2 grid: five tiles under the default coverage
    result = detector.classify_bytes([("x", data)])[0]
    tiles = preprocess(data, coverage=detector.coverage)
    assert len(tiles) == 5
    size = detector.backend.max_batch_size  # the detector's batches, so float reordering cannot move a pixel
    batches = [detector.backend.infer(tiles.pixels[i : i + size]) for i in range(0, len(tiles), size)]
    probability = np.concatenate([b.probability for b in batches]).astype(np.float64)
    ai = np.concatenate([b.ai_mask for b in batches])
    manipulation = np.concatenate([b.manipulation_mask for b in batches])
    thresholds = detector.backend.thresholds
    expected = decide(
        1 / (1 + np.exp(-np.log(probability / (1 - probability)).mean())),
        max(mask_area(tile, thresholds.mask_pixel) for tile in ai),
        max(mask_area(tile, thresholds.manipulated_pixel_threshold) for tile in manipulation),
        thresholds,
    )
    assert result.judgement is not None
    assert result.judgement.probability == pytest.approx(expected.probability, abs=1e-6)
    assert (result.judgement.ai_area, result.judgement.manipulated_area) == (
        expected.ai_area,
        expected.manipulated_area,
    )
    assert result.judgement.verdict == expected.verdict


def test_unreadable_file_gets_its_own_error(detector: Detector, tmp_path: Path) -> None:
    (tmp_path / "ok.jpg").write_bytes(_jpeg(3))
    results = detector.classify_files([tmp_path / "missing.jpg", tmp_path / "ok.jpg"])
    assert results[0].error is not None and results[0].error.reason == "unreadable"
    assert results[0].to_dict()["verdict"] == "error"
    assert results[1].judgement is not None and results[1].source.endswith("ok.jpg")


# --- reading files: stat before read, bounded chunks, input order -------------------------------------------


class _OpenRecorder:
    """Records every path opened through open()/io.open()/Path.open while installed and delegates to the real
    ones, except for ``forbidden``: opening it fails the test at once (reading 64 GiB would take the host down)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, forbidden: Path) -> None:
        self.opened: list[str] = []
        real_open, real_path_open = builtins.open, Path.open

        def check(file: object) -> None:
            self.opened.append(str(file))
            if str(file) == str(forbidden):
                raise AssertionError(f"{forbidden} was opened although stat() puts it over the byte limit")

        def recording_open(file: object, *args: object, **kwargs: object) -> object:
            check(file)
            return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

        def recording_path_open(path: Path, *args: object, **kwargs: object) -> object:
            check(path)
            return real_path_open(path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(builtins, "open", recording_open)
        monkeypatch.setattr(io, "open", recording_open)
        monkeypatch.setattr(Path, "open", recording_path_open)


def test_file_over_the_byte_limit_is_rejected_without_being_read(
    detector: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sparse 64 GiB file (no disk used) is refused from its stat(); reading it would exhaust memory."""
    huge = tmp_path / "huge.jpg"
    huge.touch()
    os.truncate(huge, 64 * 2**30)
    assert huge.stat().st_size > detector.limits.max_bytes
    paths = [tmp_path / "a.jpg", huge, tmp_path / "missing.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"]
    for seed, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        (tmp_path / name).write_bytes(_jpeg(seed))
    recorder = _OpenRecorder(monkeypatch, forbidden=huge)

    results = detector.classify_files(paths)  # max_batch_size=2: three chunks

    assert str(huge) not in recorder.opened
    assert {str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.jpg")} <= set(recorder.opened)
    assert [r.source for r in results] == [str(p) for p in paths]
    assert [r.error.reason if r.error else None for r in results] == [None, "too-many-bytes", "unreadable", None, None]
    expected = detector.classify_bytes([(str(p), p.read_bytes()) for p in (paths[0], paths[3], paths[4])])
    for got, want in zip((results[0], results[3], results[4]), expected):
        assert got.judgement is not None and want.judgement is not None
        # Batched differently (chunks of 2 vs one batch of 3): float reordering noise only.
        assert got.judgement.probability == pytest.approx(want.judgement.probability, abs=1e-5)


def test_a_file_that_grows_past_its_stat_is_cut_off() -> None:
    """stat() says 0 bytes (a device, a FIFO, a file still being written): the read itself stops at the limit."""
    limits = PreprocessLimits(max_bytes=1000)
    with pytest.raises(ImageRejected) as rejected:
        read_limited("/dev/zero", limits)
    assert rejected.value.reason == "too-many-bytes"


def test_files_are_read_one_chunk_at_a_time(detector: Detector, tmp_path: Path) -> None:
    """The first results come back after one chunk has been read, not after every file: memory is O(batch)."""
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(i))
    consumed: list[Path] = []

    def paths() -> Iterator[Path]:
        for i in range(5):
            consumed.append(tmp_path / f"{i}.jpg")
            yield consumed[-1]

    results = detector.iter_files(paths())
    first = next(results)
    assert first.source == str(tmp_path / "0.jpg") and first.judgement is not None
    assert len(consumed) <= detector.chunk_size < 5
    assert [r.source for r in [first, *results]] == [str(tmp_path / f"{i}.jpg") for i in range(5)]


# --- thresholds travel with a checkpoint --------------------------------------------------------------------


def test_checkpoint_thresholds_decide_the_verdict(tmp_path: Path) -> None:
    """The same weights and input give a different verdict under the thresholds saved in the checkpoint."""
    strict = VerdictThresholds(ai_probability=0.999, review_band=0.0)
    torch.manual_seed(0)
    model = GammaModel(preset("gamma-b0").replace(thresholds=strict)).eval()
    with torch.no_grad():  # every image gets p = sigmoid(3) ~ 0.95: AI under the defaults, not under ``strict``
        model.cls_head.weight.zero_()
        model.cls_head.bias.fill_(3.0)
    save_checkpoint(model, tmp_path / "strict", {"name": "strict", "version": 1})
    data = _jpeg(11)

    loaded = Detector.from_checkpoint(tmp_path / "strict")
    assert loaded.backend.thresholds == strict
    judged = loaded.classify_bytes([("x", data)])[0].judgement
    defaults = Detector(TorchBackend(model, model.config.replace(thresholds=VerdictThresholds()), "defaults"))
    default_judged = defaults.classify_bytes([("x", data)])[0].judgement

    assert judged is not None and default_judged is not None
    assert judged.probability == pytest.approx(default_judged.probability) == pytest.approx(0.9526, abs=1e-3)
    assert default_judged.verdict == Verdict.AI_GENERATED
    assert judged.verdict in {Verdict.REAL, Verdict.MANIPULATED}


# --- ONNX Runtime backend -----------------------------------------------------------------------------------


def test_onnx_backend_matches_torch_backend(tiny_checkpoint: Checkpoint, tiny_onnx_export: Path) -> None:
    """Same crops through ONNX Runtime and PyTorch: probabilities within the export's parity tolerance
    (PROBABILITY_ATOL = 1e-4), masks within MASK_MAX_STEP (one uint8 step), identical verdicts."""
    onnx_detector = Detector.from_onnx(tiny_onnx_export, max_batch_size=3)
    backend = onnx_detector.backend
    assert isinstance(backend, OnnxBackend)
    assert (backend.model_name, backend.model_version, backend.thresholds) == ("gamma-test", 1, TINY_EXPORT_THRESHOLDS)
    config = tiny_checkpoint.config.replace(thresholds=TINY_EXPORT_THRESHOLDS)
    torch_detector = Detector(TorchBackend(tiny_checkpoint.model, config, "gamma-test", 1, max_batch_size=2))

    # Four 512x512 tiles (ONNX batches of 3 and 1), and tiles (WxH) of 192x288, 512x384 and 96x64: dynamic shapes.
    sizes = [(512, 700), (200, 300), (700, 512), (600, 400), (100, 70)]
    items = [(str(i), _jpeg(i, size=size)) for i, size in enumerate(sizes)]
    expected = torch_detector.classify_bytes(items)
    got = onnx_detector.classify_bytes(items)
    for want, have in zip(expected, got):
        assert want.judgement is not None and have.judgement is not None
        assert have.judgement.probability == pytest.approx(want.judgement.probability, abs=PROBABILITY_ATOL)
        for mask in ("ai_mask", "manipulation_mask"):
            step = np.abs(getattr(have, mask).astype(int) - getattr(want, mask).astype(int)).max()
            assert step <= MASK_MAX_STEP
        # A verdict could only flip for a probability within the tolerance of a review-band edge; none is here.
        t = TINY_EXPORT_THRESHOLDS
        edges = (t.ai_probability - t.review_band, t.ai_probability + t.review_band)
        assert all(abs(want.judgement.probability - edge) > PROBABILITY_ATOL for edge in edges)
        assert have.judgement.verdict == want.judgement.verdict


def test_onnx_detector_from_file_and_missing_metadata(tiny_onnx_export: Path, tmp_path: Path) -> None:
    """The model.onnx path works like its folder; a bare graph without metadata needs explicit thresholds."""
    by_file = Detector.from_onnx(tiny_onnx_export / "model.onnx")
    assert by_file.backend.thresholds == TINY_EXPORT_THRESHOLDS
    bare = tmp_path / "model.onnx"
    shutil.copyfile(tiny_onnx_export / "model.onnx", bare)
    with pytest.raises(WeightsError, match="thresholds"):
        Detector.from_onnx(bare)
    explicit = Detector.from_onnx(bare, thresholds=VerdictThresholds())
    assert explicit.backend.thresholds == VerdictThresholds()
    result = explicit.classify_bytes([("x", _jpeg(5))])[0]
    assert result.judgement is not None and result.ai_mask is not None and result.ai_mask.shape == (130, 150)
