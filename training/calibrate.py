"""Choose a checkpoint's verdict thresholds on validation and write them into its config:
``python training/calibrate.py --checkpoint DIR --data VAL.jsonl``.

Rules (the same for every model; ``metadata.json`` records what they gave):
- ``ai_probability``: the lowest threshold at which the false-positive rate on real images is at most
  ``target_fpr`` (5 %), the operating point trust-and-safety teams ask for: few real photos called AI. Not on the
  validation images alone (their empirical 5 % quantile promised 5 % and gave 9 % on the test split and 10 % on the
  independent set): with probability ``fpr_confidence`` (95 %) on new real images like validation's, by the
  Neyman-Pearson umbrella rule (:func:`training.metrics.exceedances_allowed`: with 222 validation real images, 5 may
  reach the threshold instead of 11). The bound assumes i.i.d. images; validation's come in scenes (views of one
  photo), so it is optimistic, and images unlike validation's are not covered at all.
- ``review_band``: ``needs-review`` covers the band of width ``2b`` just *below* that threshold, so the
  ``ai-generated`` verdict keeps exactly the validated false-positive rate (the config stores the band's centre,
  ``threshold - b``, as ``ai_probability`` and ``b`` as ``review_band``; :func:`gamma.verdict.judge` calls
  ``ai-generated`` from ``centre + b`` up). Each validation image below the band that is AI costs 1, each real image
  above it costs 1, each image inside costs ``review_cost`` (0.25: a human look is cheaper than a wrong automatic
  verdict, not free); ``b`` minimises the mean cost over a grid of 0.00 .. 0.30 (step 0.01), the band kept inside
  [0, 1].
- ``mask_pixel`` (a mask pixel counts as flagged above it; both masks): the value on a grid of 0.10 .. 0.90 (step
  0.05) that maximises the mean of the AI-mask and manipulation-mask pixel F1 over every seen validation pixel, real
  images' included, so false flags on real photos count against it.
- ``manipulated_area`` and ``manipulated_pixel`` (a non-AI image is ``manipulated`` when the share of its
  manipulation-mask pixels above ``manipulated_pixel``, per tile, exceeds ``manipulated_area``): for each pixel value
  on a grid of 0.10 .. 0.98 (step 0.02), the area threshold follows the same false-positive rule as
  ``ai_probability``, on the plain real photos of validation (class 0, no manipulated pixel): with probability
  ``fpr_confidence``, at most ``target_fpr`` of new ones are called ``manipulated``. Only photos whose AI score
  leaves them to the area test (below the ``needs-review`` band) can be called so, and only their areas count
  (version 8 counted every plain photo's, so the few its AI score had already called AI or sent for review, whose
  manipulation masks are wide because that mask marks AI pixels too, set the threshold at 68 % of a tile, which
  almost no edit reached). Of those pairs the one that calls the most of validation's manipulated real images
  (copy-move, splicing) ``manipulated`` is kept (ties: the fewer plain photos called, then the lower pixel value),
  if it calls more than the area at ``mask_pixel`` does. The pixel value is chosen apart from ``mask_pixel``
  because the value that draws the best mask (pixel F1) flags wide, faint areas on plain photos too, while a small
  confident peak is what edited photos have and plain ones rarely do. Choosing among the grid's pairs on the same
  images makes the reported share of manipulated images caught optimistic; the plain-photo rate is each pair's own
  rule. Without manipulated validation images the area is measured at ``mask_pixel`` (``manipulated_pixel``
  unset). ``--whole-data`` adds whole validation pictures (:mod:`training.data.whole_sources`): serving judges a
  large photo by its most flagged tile, so it is called manipulated more often than a one-tile view; the rule then
  holds on the whole photos and on the views separately.
  Scores files written before mask evidence existed keep the mask thresholds as they are (the report says so).

Scores come from the serving contract (:mod:`gamma.preprocess` v2: native-resolution tiles of the default
coverage, aggregated as serving does), exactly as production sees images, not from training's validation crops.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from gamma.verdict import Verdict, VerdictThresholds, decide, mask_level
from training import metrics

TARGET_FPR = 0.05
FPR_CONFIDENCE = 0.95
REVIEW_COST = 0.25
BAND_GRID = np.round(np.arange(0.0, 0.301, 0.01), 2)
MASK_PIXEL_GRID = np.round(np.arange(0.10, 0.901, 0.05), 2)
MANIPULATED_PIXEL_GRID = np.round(np.arange(0.10, 0.981, 0.02), 2)


@dataclasses.dataclass(frozen=True)
class MaskCalibration:
    """Mask thresholds chosen on validation (module docstring) and what they measured there."""

    mask_pixel: float
    manipulated_area: float
    manipulated_pixel: float | None  # None: the area is measured at mask_pixel
    ai_mask_f1: float  # pixel F1 at mask_pixel, over every seen validation pixel
    manipulation_mask_f1: float
    ai_mask_f1_at_default: float  # the same at the untrained default (VerdictThresholds().mask_pixel)
    manipulation_mask_f1_at_default: float
    plain_real_count: int  # class-0 images with no manipulated pixel: the rule's negatives (whole photos included)
    whole_plain_count: int  # of which whole validation photos (``--whole-data``)
    manipulated_count: int  # class-0 images with manipulated pixels (copy-move, splicing)
    manipulated_fpr: float  # share of the plain real photos called manipulated (area above it, below the band)
    manipulated_tpr: float  # share of the manipulated real images called manipulated
    # the same two rates when the area is measured at mask_pixel (no pixel threshold of its own), for comparison
    manipulated_fpr_at_mask_pixel: float
    manipulated_tpr_at_mask_pixel: float


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Thresholds chosen on validation and what they measured there."""

    thresholds: VerdictThresholds
    count: int
    real_count: int
    fpr_at_threshold: float  # share of real images at or above the ai-generated threshold (centre + band)
    tpr_at_threshold: float  # share of AI images there
    ai_verdict_fpr: float  # share of real images called ai-generated (above the band)
    review_share: float  # share of all images inside the band
    error_outside_band: float  # wrong automatic verdicts among images outside the band
    ece: float
    target_fpr: float = TARGET_FPR
    fpr_confidence: float | None = None  # None: the empirical quantile (no promise beyond validation)
    # P(true FPR > target) for i.i.d. real images like these, bounded by the rule's count of allowed exceedances
    # (ties can leave fewer real scores above the threshold; the bound is the one chosen before looking)
    fpr_violation_probability: float = float("nan")
    masks: MaskCalibration | None = None  # None: the mask thresholds were left as they were

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["thresholds"] = self.thresholds.to_dict()
        return data


def calibrate_masks(
    evidence: metrics.MaskThresholdEvidence, target_fpr: float = TARGET_FPR,
    fpr_confidence: float | None = FPR_CONFIDENCE, reaches: np.ndarray | None = None,
    whole: tuple[metrics.MaskThresholdEvidence, np.ndarray] | None = None,
) -> MaskCalibration:  # fmt: skip
    """``mask_pixel``, ``manipulated_area`` and ``manipulated_pixel`` from validation's mask evidence (module
    docstring). ``reaches``: per evidence image, whether its AI score leaves it to the area test (below the
    ``needs-review`` band: :func:`reaches_area_test`); None: every image does. ``whole``: the evidence of whole
    validation pictures and their ``reaches``; their plain photos join the area rule's negatives (a photo served as
    several tiles is judged by its most flagged tile, so it is called manipulated more often than a one-tile view)."""
    fpr_confidence = fpr_confidence or None

    def mean_f1(pixel: float) -> float:  # nan when neither mask has a flagged pixel or a flag at this level
        f1 = [evidence.pixel_f1(c, mask_level(pixel)) for c in (0, 1)]
        return float(np.mean([v for v in f1 if not np.isnan(v)])) if not all(np.isnan(f1)) else float("nan")

    scored = {float(p): mean_f1(float(p)) for p in MASK_PIXEL_GRID}
    if all(np.isnan(v) for v in scored.values()):  # no mask evidence at all: keep the default
        pixel = VerdictThresholds().mask_pixel
    else:
        pixel = max(scored, key=lambda p: (np.nan_to_num(scored[p], nan=-1.0), -p))
    level, default = mask_level(pixel), mask_level(VerdictThresholds().mask_pixel)
    labels, manipulated = np.asarray(evidence.labels), np.asarray(evidence.manipulated, dtype=bool)
    plain_rows, edited_rows = (labels == 0) & ~manipulated, (labels == 0) & manipulated
    if not plain_rows.any():
        raise ValueError("mask calibration needs plain real validation images (class 0, no manipulated pixel)")
    judged = np.ones(labels.size, bool) if reaches is None else np.asarray(reaches, bool)
    whole_plain_count = 0
    if whole is not None:
        whole_evidence, whole_reaches = whole
        whole_labels = np.asarray(whole_evidence.labels)
        whole_rows = (whole_labels == 0) & ~np.asarray(whole_evidence.manipulated, dtype=bool)
        whole_plain_count = int(whole_rows.sum())

    def bound(plain: np.ndarray) -> float:
        """The area threshold the umbrella rule gives on these plain photos' areas. decide() calls an image
        manipulated when its area is *above* it: sitting on the (k+1)-th highest lets exactly the k allowed ones
        (fewer with ties) exceed it."""
        allowed = metrics.exceedances_allowed(int(plain.size), target_fpr, fpr_confidence)
        return max(float(np.sort(plain)[::-1][min(allowed, plain.size - 1)]), 0.0)

    def rule_at(manipulated_level: int) -> tuple[float, float, float]:
        """(area threshold, plain photos called manipulated, manipulated ones called so) when pixels above the level
        count; an image its AI score sends elsewhere is never called manipulated, whatever its area. With whole
        photos the rate is bounded on them and on the views separately (the higher threshold): serving meets both,
        and pooled, the few whole photos could all exceed within the views' allowance."""
        areas = np.where(judged, evidence.areas(manipulated_level), -1.0)
        plain, edited = areas[plain_rows], areas[edited_rows]
        area = bound(plain)
        if whole_plain_count:
            whole_plain = np.where(whole_reaches, whole_evidence.areas(manipulated_level), -1.0)[whole_rows]
            area = max(area, bound(whole_plain))
            plain = np.concatenate([plain, whole_plain])
        return area, float((plain > area).mean()), float((edited > area).mean()) if edited.size else float("nan")

    at_mask_pixel = rule_at(level)
    manipulated_pixel: float | None = None
    area, fpr, tpr = at_mask_pixel
    if edited_rows.any():
        rules = {float(p): rule_at(mask_level(float(p))) for p in MANIPULATED_PIXEL_GRID}
        best = max(rules, key=lambda p: (rules[p][2], -rules[p][1], -p))
        if rules[best][2] > at_mask_pixel[2]:  # moved off mask_pixel only when that catches more edited photos
            manipulated_pixel = best
            area, fpr, tpr = rules[best]
    return MaskCalibration(
        mask_pixel=pixel,
        manipulated_area=area,
        manipulated_pixel=manipulated_pixel,
        ai_mask_f1=evidence.pixel_f1(0, level),
        manipulation_mask_f1=evidence.pixel_f1(1, level),
        ai_mask_f1_at_default=evidence.pixel_f1(0, default),
        manipulation_mask_f1_at_default=evidence.pixel_f1(1, default),
        plain_real_count=int(plain_rows.sum()) + whole_plain_count,
        whole_plain_count=whole_plain_count,
        manipulated_count=int(edited_rows.sum()),
        manipulated_fpr=fpr,
        manipulated_tpr=tpr,
        manipulated_fpr_at_mask_pixel=at_mask_pixel[1],
        manipulated_tpr_at_mask_pixel=at_mask_pixel[2],
    )


def reaches_area_test(scores: np.ndarray, thresholds: VerdictThresholds) -> np.ndarray:
    """Per score, whether :func:`gamma.verdict.decide` would look at the image's manipulated area (neither
    ``ai-generated`` nor ``needs-review``): the plain photos it calls AI or sends for review cannot be called
    manipulated, so they must not set the area threshold."""
    return np.array([decide(float(p), 0.0, math.inf, thresholds).verdict is Verdict.MANIPULATED for p in scores])


def with_masks(calibration: Calibration, masks: MaskCalibration) -> Calibration:
    """``calibration`` with the mask thresholds of ``masks`` in its thresholds."""
    thresholds = dataclasses.replace(
        calibration.thresholds, mask_pixel=masks.mask_pixel, manipulated_area=masks.manipulated_area,
        manipulated_pixel=masks.manipulated_pixel,
    )  # fmt: skip
    return dataclasses.replace(calibration, thresholds=thresholds, masks=masks)


def _band_cost(labels: np.ndarray, scores: np.ndarray, threshold: float, band: float, review_cost: float) -> float:
    inside = np.abs(scores - threshold) < band
    wrong = ~inside & ((scores >= threshold) != (labels == 1))
    return float((wrong.sum() + review_cost * inside.sum()) / max(len(scores), 1))


def calibrate(
    labels, scores, base: VerdictThresholds | None = None, target_fpr: float = TARGET_FPR,
    review_cost: float = REVIEW_COST, fpr_confidence: float | None = FPR_CONFIDENCE,
) -> Calibration:  # fmt: skip
    """Thresholds from validation ``labels`` (0 real / 1 AI) and AI probabilities ``scores`` (module docstring);
    ``fpr_confidence`` None: the plain empirical quantile."""
    fpr_confidence = fpr_confidence or None  # 0 means the plain quantile, as on the command line
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.size == 0 or not (y == 0).any():
        raise ValueError("calibration needs validation images with real (label 0) examples")
    upper = float(np.clip(metrics.threshold_at_fpr(y, s, target_fpr, fpr_confidence), 1e-6, 1 - 1e-6))  # ai-generated
    bands = [float(b) for b in BAND_GRID if upper - 2 * b >= 0.0] or [0.0]
    band = min(bands, key=lambda b: (_band_cost(y, s, upper - b, b, review_cost), b))
    base = base or VerdictThresholds()
    # rounded *up* to 1e-6 (a readable config), so the ai-generated edge never slips below the validated threshold
    centre = math.ceil((upper - band) * 1e6) / 1e6
    thresholds = dataclasses.replace(base, ai_probability=centre, review_band=band)
    real, ai = s[y == 0], s[y == 1]
    inside = np.abs(s - centre) < band
    outside = ~inside
    wrong = outside & ((s >= centre) != (y == 1))
    return Calibration(
        thresholds=thresholds,
        count=int(y.size),
        real_count=int(real.size),
        fpr_at_threshold=float((real >= upper).mean()),
        tpr_at_threshold=float((ai >= upper).mean()) if ai.size else float("nan"),
        ai_verdict_fpr=float((real >= centre + band).mean()),
        review_share=float(inside.mean()),
        error_outside_band=float(wrong.sum() / max(outside.sum(), 1)),
        ece=metrics.expected_calibration_error(y, s),
        target_fpr=target_fpr,
        fpr_confidence=fpr_confidence,
        fpr_violation_probability=metrics.fpr_violation_probability(
            int(real.size), metrics.exceedances_allowed(int(real.size), target_fpr, fpr_confidence), target_fpr
        ),
    )


def scores_through_contract(
    checkpoint: str | Path, data: Path, batch_size: int = 8, coverage: str | None = None
) -> tuple[np.ndarray, np.ndarray, metrics.MaskThresholdEvidence]:
    """Labels, AI probabilities and mask evidence of a manifest's images through the serving contract
    (``coverage``: serving's default unless named)."""
    from gamma.weights import load_checkpoint
    from training.data.datasets import GammaDataset
    from training.evaluate import load_samples, predict

    model = load_checkpoint(checkpoint).model.eval()
    evidence = metrics.MaskThresholdEvidence()
    dataset = GammaDataset(load_samples(data))
    predictions = predict(model, dataset, batch_size, False, "calibrate", coverage, evidence=evidence)
    return np.asarray(predictions.labels), np.asarray(predictions.scores), evidence


def weights_digest(directory: Path) -> str:
    """SHA-256 of a checkpoint's weights file: what saved scores belong to (calibration rewrites only the config)."""
    import hashlib

    from gamma.weights import WEIGHTS_FILE

    digest = hashlib.sha256()
    with open(directory / WEIGHTS_FILE, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_calibration(directory: Path, calibration: Calibration, data: str, coverage: str | None = None) -> None:
    """Thresholds into ``config.json`` (the served model decides with them); the measurement, with the contract
    it was made under (coverage, tile aggregation), into metadata."""
    from gamma.config import GammaConfig
    from gamma.tiling import AGGREGATION, parse_coverage
    from gamma.weights import CONFIG_FILE, METADATA_FILE

    config = GammaConfig.from_json(directory / CONFIG_FILE).replace(thresholds=calibration.thresholds)
    config.to_json(directory / CONFIG_FILE)
    metadata_path = directory / METADATA_FILE
    metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
    metadata["calibration"] = {**calibration.to_dict(), "data": data,
                               "review_cost": REVIEW_COST, "rules": "training/calibrate.py", "contract": 2,
                               "coverage": parse_coverage(coverage).value, "aggregation": AGGREGATION}  # fmt: skip
    metadata_path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def _scores(
    parser: argparse.ArgumentParser, directory: Path, weights: str, data: Path, scores_file: Path | None,
    coverage: str | None,
) -> tuple[np.ndarray, np.ndarray, metrics.MaskThresholdEvidence | None]:  # fmt: skip
    """Labels, scores and mask evidence of ``data``: read from ``scores_file`` if it exists (and holds these
    weights' scores), else through the contract, then written there."""
    if scores_file is not None and scores_file.is_file():
        saved = json.loads(scores_file.read_text())
        if saved.get("weights_sha256", weights) != weights:  # files from before provenance carry none
            parser.error(f"{scores_file} holds scores of other weights than {directory}'s: delete it to rescore")
        evidence = metrics.MaskThresholdEvidence.from_dict(saved["masks"]) if "masks" in saved else None
        if evidence is None:
            print(f"{scores_file} holds no mask evidence: the mask thresholds stay as they are", file=sys.stderr)
        return np.asarray(saved["labels"]), np.asarray(saved["scores"]), evidence
    labels, scores, evidence = scores_through_contract(directory, data, coverage=coverage)
    if scores_file is not None:
        provenance = {"weights_sha256": weights, "data": str(data), "coverage": coverage}
        saved = {**provenance, "labels": labels.tolist(), "scores": scores.tolist(), "masks": evidence.to_dict()}
        scores_file.write_text(json.dumps(saved) + "\n")
    return labels, scores, evidence


def main(argv: list[str] | None = None) -> Calibration:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="checkpoint folder (rewritten in place unless --report-only)"
    )
    parser.add_argument("--data", type=Path, required=True, help="validation manifest (.jsonl) or folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--coverage", default=None, help="tiles per image: centre|five|full (default: serving's)")
    parser.add_argument(
        "--scores",
        type=Path,
        default=None,
        help="a JSON file of labels and scores: read it if it exists, else write it after inference",
    )
    parser.add_argument(
        "--whole-data", type=Path, default=None,
        help="whole validation pictures (python -m training.data.whole_sources): their plain photos, served as "
        "several tiles each, join the manipulated-area rule",
    )  # fmt: skip
    parser.add_argument("--whole-scores", type=Path, default=None, help="as --scores, for --whole-data")
    parser.add_argument(
        "--fpr-confidence", type=float, default=FPR_CONFIDENCE,
        help="probability that new real images keep the false-positive target (0: the empirical quantile)",
    )  # fmt: skip
    parser.add_argument(
        "--report-only", action="store_true",
        help="print the thresholds this data would give, leave the checkpoint as it is (e.g. the shipped model)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.fpr_confidence != 0.0 and not 0.5 <= args.fpr_confidence < 1.0:
        parser.error(f"--fpr-confidence must be 0 (the plain quantile) or in [0.5, 1), not {args.fpr_confidence}")
    import torch

    from gamma.weights import resolve_checkpoint

    torch.set_num_threads(args.threads)
    directory = resolve_checkpoint(args.checkpoint)
    weights = weights_digest(directory)
    labels, scores, evidence = _scores(parser, directory, weights, args.data, args.scores, args.coverage)
    whole = None
    if args.whole_data is not None:
        _, whole_scores, whole_evidence = _scores(
            parser, directory, weights, args.whole_data, args.whole_scores, args.coverage
        )
        whole = (whole_evidence, whole_scores) if whole_evidence is not None else None
    from gamma.config import GammaConfig
    from gamma.weights import CONFIG_FILE

    # the checkpoint's own thresholds are the base: what this run does not calibrate (masks without evidence) stays
    current = GammaConfig.from_json(directory / CONFIG_FILE).thresholds
    result = calibrate(labels, scores, base=current, fpr_confidence=args.fpr_confidence)
    if evidence is not None:
        try:
            reaches = reaches_area_test(scores, result.thresholds)
            whole_photos = None if whole is None else (whole[0], reaches_area_test(whole[1], result.thresholds))
            masks = calibrate_masks(evidence, fpr_confidence=args.fpr_confidence, reaches=reaches, whole=whole_photos)
            result = with_masks(result, masks)
        except ValueError as error:  # e.g. every real validation image is an edit: nothing to bound the rate on
            print(f"mask thresholds stay as they are: {error}", file=sys.stderr)
    if not args.report_only:
        write_calibration(directory, result, str(args.data), args.coverage)
    print(json.dumps(result.to_dict(), indent=2))
    return result


if __name__ == "__main__":
    main()
