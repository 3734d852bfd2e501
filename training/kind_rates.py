"""Per sample kind, what saved validation scores say: ``python training/kind_rates.py MANIFEST SCORES [SCORES ...]``.

``SCORES`` are the JSON files ``calibrate.py --scores`` writes (labels and probabilities in manifest order, through
serving's tiles); each is read with the thresholds of the checkpoint named by ``--checkpoint`` (one per file, in
order; default: none, so only the mean score and the share above 0.5). One scores file may be given twice, under two
checkpoints' thresholds; the report then keys each by file and checkpoint. Used for the model card's per-kind tables,
e.g. how often a real patch pasted like the DCGAN faces (``feathered_splicing``) is called ``ai-generated``. When the
file holds mask evidence (written since version 8), also the share called ``manipulated``, from each image's
manipulated area at the thresholds' ``manipulated_pixel`` and :func:`gamma.verdict.decide`, as serving decides.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from gamma.verdict import Verdict, VerdictThresholds, decide, mask_level
from gamma.weights import load_checkpoint
from training.evaluate import verdict_rates
from training.metrics import MaskThresholdEvidence


def kind_rates(manifest: Path, scores: Path, thresholds: VerdictThresholds | None = None) -> dict[str, dict]:
    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines() if line.strip()]
    saved = json.loads(Path(scores).read_text())
    labels, values = saved["labels"], saved["scores"]
    if len(values) != len(rows) or [row["label"] for row in rows] != list(labels):
        raise SystemExit(f"kind_rates: {scores} does not follow {manifest} row for row (was an image refused?)")
    manipulated = [False] * len(rows)
    if thresholds is not None and "masks" in saved:
        evidence = MaskThresholdEvidence.from_dict(saved["masks"])
        areas = evidence.areas(mask_level(thresholds.manipulated_pixel_threshold))
        manipulated = [decide(v, 0.0, a, thresholds).verdict is Verdict.MANIPULATED for v, a in zip(values, areas)]
    by_kind: dict[str, list[tuple[int, float, bool]]] = defaultdict(list)
    for row, value, called in zip(rows, values, manipulated):
        by_kind[row["kind"]].append((row["label"], value, called))
    out = {}
    for kind, found in sorted(by_kind.items()):
        kind_labels, array = np.asarray([f[0] for f in found]), np.asarray([f[1] for f in found])
        entry: dict[str, float | int] = {
            "label": int(kind_labels[0]), "count": int(array.size),
            "mean": float(array.mean()), "above_half": float((array > 0.5).mean()),
        }  # fmt: skip
        if thresholds is not None:  # the checkpoint's verdicts, as evaluate.py counts them
            rates = verdict_rates(kind_labels, array, thresholds)["ai" if kind_labels[0] else "real"]
            entry.update(ai_generated=rates["ai_generated"], needs_review=rates["needs_review"])
            if "masks" in saved:
                entry["manipulated"] = float(np.mean([f[2] for f in found]))
        out[kind] = entry
    return out


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("scores", type=Path, nargs="+")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    if args.checkpoint and len(args.checkpoint) != len(args.scores):
        parser.error("give one --checkpoint per scores file, or none")
    # keyed by the scores file; by file and checkpoint when one file is read under several checkpoints' thresholds
    repeated = len(set(args.scores)) < len(args.scores)
    if repeated and not args.checkpoint:
        parser.error("a scores file given twice without checkpoints would be reported twice the same")
    report = {}
    for index, scores in enumerate(args.scores):
        thresholds = load_checkpoint(args.checkpoint[index]).config.thresholds if args.checkpoint else None
        key = f"{scores} @ {args.checkpoint[index]}" if repeated else str(scores)
        report[key] = kind_rates(args.manifest, scores, thresholds)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
