"""training/calibrate.py: the ai-generated verdict keeps the validated false-positive rate, the review band sits
just below it and is chosen by cost, and the thresholds land in the checkpoint's config."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gamma.verdict import Verdict, VerdictThresholds, judge
from training.calibrate import Calibration, calibrate, main, write_calibration

NO_MASK = np.zeros((4, 4), dtype=np.uint8)


def _scores(seed: int = 0, n: int = 400, overlap: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    scores = np.clip(np.r_[rng.beta(2, 5, n // 2), rng.beta(5, 2, n // 2)] + overlap * rng.normal(0, 0.1, n), 0, 1)
    return labels, scores


def _checkpoint_and_saved_scores(tmp_path, seed: int):
    """A micro checkpoint at ``tmp_path/m`` and a ``--scores`` file of ``_scores(seed)`` beside it."""
    from gamma.model import GammaModel
    from gamma.weights import save_checkpoint
    from tests.fixtures.models import MICRO_CONFIG

    save_checkpoint(GammaModel(MICRO_CONFIG), tmp_path / "m", {"name": "m", "version": 1})
    labels, scores = _scores(seed)
    saved = tmp_path / "scores.json"
    saved.write_text(json.dumps({"labels": labels.tolist(), "scores": scores.tolist()}))
    return tmp_path / "m", saved, labels, scores


def _verdicts(result: Calibration, scores: np.ndarray) -> list[Verdict]:
    return [judge(p, NO_MASK, NO_MASK, result.thresholds).verdict for p in scores]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ai_verdicts_on_real_images_stay_within_the_target_rate(seed: int) -> None:
    labels, scores = _scores(seed)
    result = calibrate(labels, scores)
    verdicts = np.array(_verdicts(result, scores))
    called_ai = verdicts == Verdict.AI_GENERATED
    assert called_ai[labels == 0].mean() <= 0.05
    assert result.ai_verdict_fpr == pytest.approx(called_ai[labels == 0].mean())
    assert result.fpr_at_threshold == pytest.approx(result.ai_verdict_fpr)  # the band sits below the threshold
    assert result.review_share == pytest.approx((verdicts == Verdict.NEEDS_REVIEW).mean())
    t = result.thresholds
    assert 0.0 <= t.ai_probability - t.review_band and t.ai_probability + t.review_band <= 1.0


def test_band_grows_when_scores_overlap_and_vanishes_when_they_do_not() -> None:
    separated = calibrate(np.r_[np.zeros(100, int), np.ones(100, int)], np.r_[np.full(100, 0.1), np.full(100, 0.9)])
    assert separated.thresholds.review_band == 0.0 and separated.error_outside_band == 0.0
    labels, scores = _scores(0, overlap=3.0)
    assert calibrate(labels, scores).thresholds.review_band > 0.0


def test_a_costlier_review_narrows_the_band() -> None:
    labels, scores = _scores(1, overlap=2.0)
    cheap = calibrate(labels, scores, review_cost=0.05).thresholds.review_band
    dear = calibrate(labels, scores, review_cost=0.9).thresholds.review_band
    assert cheap >= dear


def test_the_threshold_promises_the_target_on_new_images_not_only_on_validation() -> None:
    labels, scores = _scores(1, n=800)
    plain = calibrate(labels, scores, fpr_confidence=None)
    bounded = calibrate(labels, scores)  # 95 %, the default
    assert bounded.fpr_confidence == 0.95 and plain.fpr_confidence is None and bounded.target_fpr == 0.05
    assert calibrate(labels, scores, fpr_confidence=0.0) == plain
    assert bounded.fpr_violation_probability <= 0.05 < plain.fpr_violation_probability
    assert bounded.fpr_at_threshold < plain.fpr_at_threshold <= 0.05  # stricter on validation to hold beyond it
    upper = bounded.thresholds.ai_probability + bounded.thresholds.review_band
    assert upper >= plain.thresholds.ai_probability + plain.thresholds.review_band


def test_cli_fpr_confidence_zero_is_the_plain_quantile(tmp_path) -> None:
    checkpoint, saved, labels, scores = _checkpoint_and_saved_scores(tmp_path, 4)
    result = main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "absent.jsonl"),
                   "--scores", str(saved), "--threads", "1", "--report-only", "--fpr-confidence", "0"])  # fmt: skip
    assert result == calibrate(labels, scores, fpr_confidence=None)
    for refused in ("1", "0.3"):  # below 0.5 the rule would allow more than the quantile: it never does
        with pytest.raises(SystemExit):
            main(["--checkpoint", str(checkpoint), "--data", "x", "--fpr-confidence", refused])


def test_saved_scores_of_other_weights_are_refused(tmp_path) -> None:
    from training.calibrate import weights_digest

    for digest, accepted in (("0" * 64, False), (None, True)):
        checkpoint, saved, labels, scores = _checkpoint_and_saved_scores(tmp_path, 5)
        digest = digest or weights_digest(checkpoint)
        saved.write_text(json.dumps({"weights_sha256": digest, "labels": labels.tolist(), "scores": scores.tolist()}))
        argv = ["--checkpoint", str(checkpoint), "--data", "x", "--scores", str(saved), "--report-only"]
        if accepted:
            assert main(argv) == calibrate(labels, scores)
        else:
            with pytest.raises(SystemExit):
                main(argv)


def test_needs_real_images() -> None:
    with pytest.raises(ValueError, match="real"):
        calibrate([1, 1], [0.2, 0.9])


def test_thresholds_are_written_into_the_checkpoint_and_read_back(tmp_path) -> None:
    from gamma.model import GammaModel
    from gamma.weights import load_checkpoint, save_checkpoint
    from tests.fixtures.models import MICRO_CONFIG

    save_checkpoint(GammaModel(MICRO_CONFIG), tmp_path / "m", {"name": "m", "version": 1})
    labels, scores = _scores(0)
    result = calibrate(labels, scores)
    write_calibration(tmp_path / "m", result, "val.jsonl")
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.config.thresholds == result.thresholds
    assert loaded.metadata["calibration"]["thresholds"] == result.thresholds.to_dict()
    assert loaded.metadata["version"] == 1  # the rest of the metadata stays


def test_cli_reuses_saved_scores_without_inference(tmp_path) -> None:
    from gamma.weights import load_checkpoint

    checkpoint, saved, labels, scores = _checkpoint_and_saved_scores(tmp_path, 2)
    result = main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "absent.jsonl"),
                   "--scores", str(saved), "--threads", "1"])  # fmt: skip
    expected = calibrate(labels, scores).thresholds
    assert load_checkpoint(checkpoint).config.thresholds == result.thresholds == expected


def test_report_only_leaves_the_checkpoint_untouched(tmp_path) -> None:
    checkpoint, saved, labels, scores = _checkpoint_and_saved_scores(tmp_path, 3)
    before = {f.name: f.read_bytes() for f in checkpoint.iterdir()}
    result = main(["--checkpoint", str(checkpoint), "--data", str(tmp_path / "absent.jsonl"),
                   "--scores", str(saved), "--threads", "1", "--report-only"])  # fmt: skip
    assert result.thresholds == calibrate(labels, scores).thresholds
    assert {f.name: f.read_bytes() for f in checkpoint.iterdir()} == before


# --- mask thresholds -----------------------------------------------------------------------------------------


def _evidence_of(images: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]):
    """Mask evidence of one-tile images: (label, AI mask, manipulation mask, AI target, manipulation target)."""
    from training.metrics import MaskThresholdEvidence

    evidence = MaskThresholdEvidence()
    for label, ai, manipulation, ai_target, manipulation_target in images:
        one_tile = manipulation[None]  # the image is its only tile
        evidence.add(label, (ai, manipulation), (ai_target, manipulation_target), np.ones(ai.shape, bool), one_tile)
    return evidence


def _noisy_masks(seed: int = 0, side: int = 16):
    """Real photos whose masks carry mid-level false flags (~150 of 255), edited real images and AI images whose
    edited region is confident (~230): a threshold of 0.5 flags the false pixels, one near 0.7 does not."""
    rng = np.random.default_rng(seed)
    images, zero = [], np.zeros((side, side))
    region = np.zeros((side, side))
    region[4:10, 4:10] = 1.0

    def mask(truth: np.ndarray, false_share: float) -> np.ndarray:
        values = rng.integers(0, 60, truth.shape)
        values[rng.random(truth.shape) < false_share] = rng.integers(140, 160)
        values[truth >= 0.5] = rng.integers(215, 250, int((truth >= 0.5).sum()))
        return values.astype(np.uint8)

    for _ in range(80):  # plain real photos
        images.append((0, mask(zero, 0.2), mask(zero, 0.2), zero, zero))
    for _ in range(40):  # copy-move / splicing: the manipulation mask has the region
        images.append((0, mask(zero, 0.2), mask(region, 0.2), zero, region))
    for _ in range(40):  # local AI edits: both masks have the region
        images.append((1, mask(region, 0.2), mask(region, 0.2), region, region))
    return _evidence_of(images)


def test_mask_evidence_counts_as_pixel_counts_and_areas_as_serving() -> None:
    """On overlapping tiles (a 700 px image under ``five``) the area curve is serving's per-tile area, not the
    stitched mask's (which keeps the larger value where tiles overlap)."""
    from gamma.tiling import MASK_STRIDE, combine_tiles, plan_tiles
    from gamma.verdict import mask_level
    from training.metrics import MaskThresholdEvidence, PixelCounts

    plan = plan_tiles(700, 700, "five")
    assert plan.tiles_seen > 1
    rng = np.random.default_rng(3)
    shape = (plan.tiles_seen, plan.tile_height // MASK_STRIDE, plan.tile_width // MASK_STRIDE)
    ai = rng.integers(0, 256, shape, dtype=np.uint8)
    manipulation = np.where(rng.random(shape) < 0.02, 255, 0).astype(np.uint8)  # sparse flags: overlaps matter
    seen = plan.seen()
    ai_target, manipulation_target = (rng.random(seen.shape) for _ in range(2))
    for pixel in (0.3, 0.5, 0.8):
        outputs = combine_tiles(plan, np.full(plan.tiles_seen, 0.5), ai, manipulation, mask_pixel=pixel)
        evidence = MaskThresholdEvidence()
        evidence.add(0, (outputs.ai_mask, outputs.manipulation_mask), (ai_target, manipulation_target), seen,
                     outputs.tile_manipulation_masks)  # fmt: skip
        level = mask_level(pixel)
        assert evidence.areas(level)[0] == pytest.approx(outputs.manipulated_area)  # what decide() is given
        counts = PixelCounts()
        counts.update(outputs.ai_mask[seen] > level, ai_target[seen])  # flagged as serving flags
        assert evidence.pixel_f1(0, level) == pytest.approx(counts.f1)
        assert evidence.manipulated == [True] and evidence.labels == [0]


def test_without_mask_evidence_the_checkpoints_mask_thresholds_stay(tmp_path) -> None:
    from gamma.config import GammaConfig
    from gamma.verdict import VerdictThresholds

    checkpoint, saved, labels, scores = _checkpoint_and_saved_scores(tmp_path, 6)  # a scores file without "masks"
    config = GammaConfig.from_json(checkpoint / "config.json")
    calibrated = VerdictThresholds(mask_pixel=0.7, manipulated_area=0.3)
    config.replace(thresholds=calibrated).to_json(checkpoint / "config.json")
    result = main(["--checkpoint", str(checkpoint), "--data", "x", "--scores", str(saved), "--report-only"])
    assert result.masks is None
    assert (result.thresholds.mask_pixel, result.thresholds.manipulated_area) == (0.7, 0.3)
    assert result.thresholds.ai_probability == calibrate(labels, scores).thresholds.ai_probability


def test_masks_without_any_signal_keep_the_default_pixel_threshold() -> None:
    from training.calibrate import calibrate_masks

    blank, zero = np.zeros((8, 8), np.uint8), np.zeros((8, 8))
    masks = calibrate_masks(_evidence_of([(0, blank, blank, zero, zero)] * 4))
    assert masks.mask_pixel == VerdictThresholds().mask_pixel and masks.manipulated_fpr == 0.0


def test_mask_pixel_rises_above_false_flags_and_manipulated_keeps_the_target_rate() -> None:
    from gamma.verdict import decide
    from training.calibrate import calibrate_masks, with_masks

    masks = calibrate_masks(_noisy_masks())
    assert 0.6 <= masks.mask_pixel <= 0.85  # above the false flags (~0.59), below the true ones (~0.84)
    assert masks.ai_mask_f1 > masks.ai_mask_f1_at_default and masks.manipulation_mask_f1 == pytest.approx(1.0)
    assert masks.plain_real_count == 80 and masks.manipulated_count == 40
    assert masks.manipulated_fpr <= 0.05 and masks.manipulated_tpr == 1.0
    evidence = _noisy_masks()
    areas = evidence.areas(round(masks.mask_pixel * 255))
    thresholds = with_masks(calibrate(*_scores(0)), masks).thresholds
    assert (thresholds.mask_pixel, thresholds.manipulated_area) == (masks.mask_pixel, masks.manipulated_area)
    plain = [decide(0.0, 0.0, a, thresholds).verdict for a, m in zip(areas, evidence.manipulated) if not m]
    assert sum(v == Verdict.MANIPULATED for v in plain) / len(plain) == pytest.approx(masks.manipulated_fpr)


def test_calibration_through_the_contract_writes_mask_thresholds_and_saves_their_evidence(tmp_path) -> None:
    from gamma.model import GammaModel
    from gamma.weights import load_checkpoint, save_checkpoint
    from tests.fixtures.models import MICRO_CONFIG
    from tests.training.synthetic import write_pattern_set

    data = write_pattern_set(tmp_path / "data", n_train=0, n_val=8)
    save_checkpoint(GammaModel(MICRO_CONFIG), tmp_path / "m", {"name": "m", "version": 1})
    saved = tmp_path / "scores.json"
    argv = ["--checkpoint", str(tmp_path / "m"), "--data", str(data / "val.jsonl"), "--scores", str(saved),
            "--threads", "1"]  # fmt: skip
    result = main(argv)
    assert result.masks is not None and result.masks.plain_real_count == 4
    written = load_checkpoint(tmp_path / "m").config.thresholds
    assert (written.mask_pixel, written.manipulated_area) == (result.masks.mask_pixel, result.masks.manipulated_area)
    assert "masks" in json.loads(saved.read_text())
    again = main(argv)  # the saved evidence gives the same calibration without inference (NaN-safe comparison)
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(result.to_dict(), sort_keys=True)


def test_mask_calibration_needs_plain_real_photos() -> None:
    from training.calibrate import calibrate_masks

    region = np.zeros((8, 8))
    region[:4] = 1.0
    edited = np.full((8, 8), 200, np.uint8)
    with pytest.raises(ValueError, match="plain real"):  # main() then keeps the mask thresholds and says so
        calibrate_masks(_evidence_of([(0, edited, edited, np.zeros((8, 8)), region)] * 3))


def _peak_masks(seed: int = 0, side: int = 16):
    """Plain photos whose manipulation masks carry a wide faint area (~150 of 255 on 30 % of pixels) and edited ones
    with the same plus a small confident peak (250 on 4 pixels, 1.6 %); AI images whose AI masks are faint too,
    so the best-F1 mask_pixel sits low, where the faint areas of plain photos swamp the peak."""
    rng = np.random.default_rng(seed)
    zero, region = np.zeros((side, side)), np.zeros((side, side))
    region[2:4, 2:4] = 1.0

    def faint(share: float = 0.3) -> np.ndarray:
        values = rng.integers(0, 40, (side, side))
        values[rng.random((side, side)) < share] = 150
        return values.astype(np.uint8)

    images = [(0, faint(0.0), faint(), zero, zero) for _ in range(80)]
    for _ in range(40):
        manipulation = faint()
        manipulation[region >= 0.5] = 250
        images.append((0, faint(0.0), manipulation, zero, region))
    for _ in range(40):
        ai = faint(0.0)
        ai[4:12, 4:12] = 150  # AI regions the AI mask marks at ~0.59
        target = np.zeros((side, side))
        target[4:12, 4:12] = 1.0
        images.append((1, ai, faint(0.0), target, zero))
    return _evidence_of(images)


def test_manipulated_pixel_moves_to_the_confident_peak_that_tells_edits_from_plain_photos() -> None:
    from gamma.verdict import decide, mask_level
    from training.calibrate import calibrate_masks, with_masks

    evidence = _peak_masks()
    masks = calibrate_masks(evidence)
    assert masks.mask_pixel < 0.59  # the AI masks' best F1 flags their faint regions
    assert masks.manipulated_tpr_at_mask_pixel < 0.2  # there the plain photos' faint areas hide the edits
    assert masks.manipulated_pixel is not None and masks.manipulated_pixel > 0.59
    assert masks.manipulated_tpr == 1.0 and masks.manipulated_fpr <= 0.05
    thresholds = with_masks(calibrate(*_scores(0)), masks).thresholds
    assert thresholds.manipulated_pixel == masks.manipulated_pixel
    areas = evidence.areas(mask_level(thresholds.manipulated_pixel_threshold))
    verdicts = [decide(0.0, 0.0, a, thresholds).verdict for a, label in zip(areas, evidence.labels) if label == 0]
    assert sum(v is Verdict.MANIPULATED for v in verdicts) == 40  # exactly the 40 edited photos


def test_manipulated_pixel_stays_unset_when_mask_pixel_already_catches_every_edit() -> None:
    from training.calibrate import calibrate_masks

    masks = calibrate_masks(_noisy_masks())
    assert masks.manipulated_tpr_at_mask_pixel == 1.0 and masks.manipulated_pixel is None


def test_plain_photos_the_ai_score_sends_elsewhere_do_not_set_the_manipulated_area() -> None:
    """Ten plain photos with wide manipulation masks whose AI score already makes them `ai-generated` or
    `needs-review`: they can never be called manipulated, so they must not push the area above the edits'."""
    from training.calibrate import calibrate_masks, reaches_area_test

    zero, region = np.zeros((16, 16)), np.zeros((16, 16))
    region[:4] = 1.0  # 25 % of the tile
    wide = np.full((16, 16), 255, np.uint8)
    edited = np.where(region >= 0.5, 255, 0).astype(np.uint8)
    clean = np.zeros((16, 16), np.uint8)
    images = [(0, clean, wide, zero, zero)] * 10 + [(0, clean, clean, zero, zero)] * 90
    images += [(0, clean, edited, zero, region)] * 20
    evidence = _evidence_of(images)
    thresholds = VerdictThresholds(ai_probability=0.6, review_band=0.1)
    scores = np.array([0.9] * 10 + [0.1] * 110)  # the ten wide ones score as AI
    reaches = reaches_area_test(scores, thresholds)
    assert reaches.tolist() == [False] * 10 + [True] * 110
    blind = calibrate_masks(evidence)
    assert blind.manipulated_tpr == 0.0  # every plain area counted: the ten wide ones set the threshold
    judged = calibrate_masks(evidence, reaches=reaches)
    assert judged.manipulated_tpr == 1.0 and judged.manipulated_fpr == 0.0


def test_whole_photos_bound_the_manipulated_rate_on_their_own() -> None:
    """Views of one tile are clean, but 3 of 28 whole photos (judged by their most flagged tile) carry a 10 %
    flagged area: pooled they would fit the views' allowance, so the rule bounds them separately."""
    from training.calibrate import calibrate_masks

    zero, region = np.zeros((16, 16)), np.zeros((16, 16))
    region[:2] = 1.0  # 12.5 %
    clean = np.zeros((16, 16), np.uint8)
    edited = np.where(region >= 0.5, 255, 0).astype(np.uint8)
    views = _evidence_of([(0, clean, clean, zero, zero)] * 160 + [(0, clean, edited, zero, region)] * 20)
    blotch = np.zeros((16, 16), np.uint8)
    blotch[:1, :] = 255
    blotch[1, :10] = 255  # 26 of 256 pixels: 10 %
    whole = _evidence_of([(0, clean, blotch, zero, zero)] * 3 + [(0, clean, clean, zero, zero)] * 25)
    alone = calibrate_masks(views)
    assert alone.manipulated_area == 0.0 and alone.whole_plain_count == 0
    both = calibrate_masks(views, whole=(whole, np.ones(28, bool)))
    assert both.whole_plain_count == 28 and both.plain_real_count == 188
    assert both.manipulated_area >= 26 / 256  # none of the whole photos is called manipulated
    assert both.manipulated_fpr == 0.0 and both.manipulated_tpr == 1.0  # the 12.5 % edits still are


def test_calibration_with_whole_photos_scores_them_through_the_contract_and_saves_them(tmp_path) -> None:
    from gamma.model import GammaModel
    from gamma.weights import save_checkpoint
    from tests.fixtures.models import MICRO_CONFIG
    from tests.training.synthetic import write_pattern_set

    data = write_pattern_set(tmp_path / "data", n_train=0, n_val=8)
    save_checkpoint(GammaModel(MICRO_CONFIG), tmp_path / "m", {"name": "m", "version": 1})
    whole_scores = tmp_path / "whole.json"
    argv = ["--checkpoint", str(tmp_path / "m"), "--data", str(data / "val.jsonl"), "--report-only", "--threads",
            "1", "--whole-data", str(data / "val.jsonl"), "--whole-scores", str(whole_scores)]  # fmt: skip
    result = main(argv)
    assert result.masks is not None and result.masks.whole_plain_count == 4 and result.masks.plain_real_count == 8
    assert json.loads(whole_scores.read_text())["data"] == str(data / "val.jsonl")
    assert json.dumps(main(argv).to_dict(), sort_keys=True) == json.dumps(result.to_dict(), sort_keys=True)
