"""Leave-one-generator-out evaluation: ``python training/cross_generator.py --data DIR [--json J] [--gamma-minutes M]``.

Does a detector find images of a generator it has never seen? ``DIR`` is the local recipe's manifest folder
(``train/val/test.jsonl``; rows with ``image``, ``label``, masks, ``kind``, ``source`` and, in newer builds,
``generator``). Among the fully generated rows (``kind == "synthetic"``), the ``--top`` most frequent generator
families with at least ``--min-sources`` distinct source images are held out one at a time. For a held-out G:

- learning data: the train split without any row of G (all its real rows and every other generator stay);
  held-in validation: the val split without any row of G (it chooses C / the checkpoint and the threshold: at most
  ``--target-fpr`` of its real images, label 0, flagged);
- held-out test: every synthetic row of G from any split, plus the test split's ``kind == "real"`` rows;
- in-distribution reference: the test split's synthetic rows of the other generators, plus the same real rows.

Learners: the frozen-feature baseline (:mod:`training.baseline`, always; features are computed once per image and
shared by all folds) and, with ``--gamma-minutes > 0``, GAMMA fine-tuned from ImageNet with
:class:`training.train.Trainer` (preset ``--preset``, ``max_minutes`` = the budget, run folder ``--out/<G>``).
Reported per G and learner: counts, ROC-AUC, balanced accuracy at the held-in threshold, and the same on the
reference; a rich table is printed and ``--json`` writes everything.

Rows without a ``generator`` field get one from their ``source`` id (``comfyui:<template name>``) by
:func:`training.data.sources.generator_name` (the one table of generator names).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from gamma.model import GammaModel
from gamma.tiling import Coverage, parse_coverage
from training import baseline
from training.data import datasets
from training.data.datasets import GammaDataset, Sample
from training.data.sources import generator_family, generator_name
from training.evaluate import predict
from training.metrics import threshold_at_fpr

SPLITS = ("train", "val", "test")


def generator_of(row: dict[str, Any]) -> str:
    """The generator *family* of a manifest row ("" for real rows): the recipe's ``generator`` field, else the one
    :func:`training.data.sources.generator_name` reads from a ``comfyui:<template>`` source id, merged into
    families by :func:`~training.data.sources.generator_family` (holding out FLUX.1 while FLUX.2 trains would leak)."""
    if int(row.get("label", 0)) == 0:
        return ""
    name = str(row.get("generator") or "")
    source = str(row.get("source", ""))
    if not name and source.startswith("comfyui:"):
        name = generator_name(source.removeprefix("comfyui:") + ".webp")  # ids drop the file suffix
    return generator_family(name) if name and name != "photo" else ""


@dataclass(frozen=True)
class Row:
    """One manifest row as a :class:`Sample`, with what the split logic needs."""

    sample: Sample
    split: str
    kind: str
    source: str
    generator: str


def load_rows(folder: Path) -> list[Row]:
    """All rows of ``train/val/test.jsonl`` (each must exist) in file order."""
    folder, rows = Path(folder), []
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: missing {split}.jsonl (build: python -m training.data.local_recipe)")
        raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        samples = datasets.manifest(path)  # same line filter, so the two lists pair up
        for sample, row in zip(samples, raw, strict=True):
            kind = str(row.get("kind", ""))
            rows.append(Row(sample, split, kind, str(row.get("source", "")), generator_of(row)))
    return rows


def generator_counts(rows: Sequence[Row]) -> dict[str, dict[str, int]]:
    """Per generator of the synthetic rows: row count and distinct source images."""
    count: Counter[str] = Counter()
    sources: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row.kind == "synthetic" and row.sample.label == 1 and row.generator:
            count[row.generator] += 1
            sources[row.generator].add(row.source or str(row.sample.image))
    return {g: {"rows": count[g], "sources": len(sources[g])} for g in sorted(count)}


def choose_generators(rows: Sequence[Row], top: int = 4, min_sources: int = 8) -> list[str]:
    """The ``top`` most frequent synthetic generators (by rows, ties by name) with >= ``min_sources`` sources."""
    counts = generator_counts(rows)
    eligible = [g for g, c in counts.items() if c["sources"] >= min_sources]
    return sorted(eligible, key=lambda g: (-counts[g]["rows"], g))[:top]


@dataclass(frozen=True)
class LeaveOut:
    """The data of one held-out generator."""

    generator: str
    train: list[Sample]
    val: list[Sample]
    heldout: list[Sample]  # G's synthetic rows (all splits) + the test split's real rows
    reference: list[Sample]  # the test split's synthetic rows of other generators + the same real rows

    def counts(self) -> dict[str, int]:
        return {
            "train": len(self.train), "val": len(self.val),
            "heldout_ai": sum(s.label for s in self.heldout), "heldout_real": sum(1 - s.label for s in self.heldout),
            "reference_ai": sum(s.label for s in self.reference),
        }  # fmt: skip


def leave_one_out(rows: Sequence[Row], generator: str) -> LeaveOut:
    """Splits for held-out ``generator`` (see the module docstring); a pure function of ``rows``."""
    if not generator:
        raise ValueError("the held-out generator must be named")
    test_real = [r.sample for r in rows if r.split == "test" and r.kind == "real"]
    return LeaveOut(
        generator,
        train=[r.sample for r in rows if r.split == "train" and r.generator != generator],
        val=[r.sample for r in rows if r.split == "val" and r.generator != generator],
        heldout=[r.sample for r in rows if r.kind == "synthetic" and r.generator == generator] + test_real,
        reference=[
            r.sample for r in rows
            if r.split == "test" and r.kind == "synthetic" and r.generator not in ("", generator)
        ] + test_real,
    )  # fmt: skip


def _labels(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([s.label for s in samples], np.int64)


def _summary(split: LeaveOut, heldout: np.ndarray, reference: np.ndarray, threshold: float) -> dict[str, Any]:
    return {
        "threshold": threshold,
        "heldout": baseline.score_report(_labels(split.heldout), heldout, threshold),
        "reference": baseline.score_report(_labels(split.reference), reference, threshold),
    }


def run_baseline(
    split: LeaveOut, extractor: baseline.FeatureExtractor, *, c_grid: Sequence[float] = baseline.C_GRID,
    target_fpr: float = baseline.TARGET_FPR,
) -> dict[str, Any]:  # fmt: skip
    """The frozen-feature baseline on one fold (features come from ``extractor``'s cache after the first fold)."""
    probe = baseline.fit_probe(
        extractor(split.train), _labels(split.train), extractor(split.val), _labels(split.val), c_grid=c_grid,
        target_fpr=target_fpr,
    )  # fmt: skip
    result = _summary(
        split, probe.scores(extractor(split.heldout)), probe.scores(extractor(split.reference)), probe.threshold
    )
    return {"learner": "baseline", "C": probe.C, **result}


def _gamma_scores(model: GammaModel, samples: Sequence[Sample], coverage: Coverage, batch_size: int) -> np.ndarray:
    """AI probabilities through the serving contract (evaluate.predict), in ``samples`` order."""
    if not samples:
        return np.zeros(0)
    model.eval().cpu()
    scores = predict(model, GammaDataset(samples), batch_size, False, "scores", coverage).scores
    if len(scores) != len(samples):  # serving refused some (too-small): the order would no longer hold
        raise ValueError(f"{len(samples) - len(scores)} of {len(samples)} images are too small to score")
    return np.asarray(scores)


def run_gamma(
    split: LeaveOut, out: Path, *, preset: str = "local-effl0", minutes: float = 10.0, overrides: Sequence[str] = (),
    coverage: Coverage | str | None = None, target_fpr: float = baseline.TARGET_FPR, batch_size: int = 8,
    progress: bool = True, data: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """GAMMA fine-tuned on one fold with the training recipe's Trainer (``max_minutes`` = ``minutes``), then
    scored through the serving contract (``coverage``) on held-in val (threshold), the held-out generator and the
    reference."""
    from training import distributed
    from training.config import TrainConfig
    from training.train import Trainer, _overrides

    # the budget is set directly: a preset's integer max_minutes would make "--set max_minutes=0.5" an int() error
    coverage = parse_coverage(coverage)
    config = dataclasses.replace(_overrides(TrainConfig.named(preset), list(overrides)), max_minutes=float(minutes))
    # the run's metrics.json names what it learned from: this fold, not the preset's manifest folder
    config = dataclasses.replace(config, data={"leave_one_generator_out": split.generator, **(data or {})})
    out.mkdir(parents=True, exist_ok=True)
    info = distributed.setup()
    try:
        trainer = Trainer(config, {"train": split.train, "val": split.val}, out, info, Path(preset).stem, progress)
        summary = trainer.finish(trainer.fit())
        model = trainer.model
        val_scores = _gamma_scores(model, split.val, coverage, batch_size)
        threshold = float(threshold_at_fpr(_labels(split.val), val_scores, target_fpr))
        if not np.isfinite(threshold):
            threshold = 0.5
        result = _summary(
            split, _gamma_scores(model, split.heldout, coverage, batch_size),
            _gamma_scores(model, split.reference, coverage, batch_size), threshold,
        )  # fmt: skip
    finally:
        distributed.cleanup(info)
    return {"learner": "gamma", "preset": preset, "minutes": minutes, "coverage": coverage.value, "run": summary["run"],
            "checkpoint": str(out / "checkpoint"), **result}  # fmt: skip


def cross_generator(
    data: Path, *, top: int = 4, min_sources: int = 8, generators: Sequence[str] | None = None,
    variant: str = baseline.DEFAULT_VARIANT, coverage: Coverage | str | None = None,
    target_fpr: float = baseline.TARGET_FPR,
    gamma_minutes: float = 0.0, gamma_preset: str = "local-effl0", gamma_overrides: Sequence[str] = (),
    out: Path = Path("runs/cross-generator"), batch_size: int = 8,
    device: str = "cpu", progress: bool = True, with_baseline: bool = False, independent: Path | None = None,
    fold_baseline: bool = True, json_path: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Leave-one-generator-out folds; with ``with_baseline`` also the frozen baseline on the ordinary split (and,
    with ``independent``, on that manifest too), sharing one feature cache so every image is encoded once.

    ``fold_baseline=False`` leaves the frozen baseline out of the folds (it is deterministic, so an earlier run's
    rows stand, and encoding every image for it costs ~20 CPU minutes that a GAMMA-only run would rather train with).
    With ``json_path`` the report is written after every fold (``"complete": false`` until the last), so an hours-long
    GAMMA run that is stopped keeps the folds it finished."""
    if not fold_baseline and gamma_minutes <= 0 and not with_baseline:
        raise ValueError("nothing to run: no fold baseline, no GAMMA minutes and no ordinary-split baseline")
    started = time.time()
    rows = load_rows(data)
    chosen = list(generators) if generators else choose_generators(rows, top, min_sources)
    report: dict[str, Any] = {
        "data": str(data),
        "settings": {"top": top, "min_sources": min_sources, "variant": variant,
                     "coverage": parse_coverage(coverage).value,
                     "target_fpr": target_fpr, "gamma_minutes": gamma_minutes, "gamma_preset": gamma_preset,
                     "fold_baseline": fold_baseline},
        "generator_counts": generator_counts(rows),
        "generators": chosen,
        "results": [],
        "complete": False,
    }  # fmt: skip
    needs_features = (bool(chosen) and fold_baseline) or with_baseline
    extractor = baseline.FeatureExtractor(variant, coverage, batch_size, device, progress) if needs_features else None
    if with_baseline:
        splits = baseline.load_manifests(Path(data))
        report["baseline"] = baseline.frozen_baseline(
            splits["train"], splits["val"], splits["test"], extractor=extractor, target_fpr=target_fpr
        )
        if independent is not None:
            report["baseline_independent"] = baseline.frozen_baseline(
                splits["train"], splits["val"], datasets.manifest(independent), extractor=extractor,
                target_fpr=target_fpr,
            )  # fmt: skip
    for generator in chosen:
        split = leave_one_out(rows, generator)
        entry: dict[str, Any] = {"generator": generator, "counts": split.counts(), "learners": []}
        if progress:
            print(json.dumps({"held_out": generator, **entry["counts"]}), flush=True)
        if fold_baseline:
            entry["learners"].append(run_baseline(split, extractor, target_fpr=target_fpr))  # type: ignore[arg-type]
        if gamma_minutes > 0:
            entry["learners"].append(run_gamma(
                split, Path(out) / _folder_name(generator), preset=gamma_preset, minutes=gamma_minutes,
                overrides=gamma_overrides, coverage=coverage, target_fpr=target_fpr,
                batch_size=batch_size, progress=progress, data={"manifest_dir": str(data)},
            ))  # fmt: skip
        report["results"].append(entry)
        report["seconds"] = round(time.time() - started, 1)
        if json_path is not None:
            write_report(report, json_path)
    report["seconds"] = round(time.time() - started, 1)
    report["complete"] = True
    if json_path is not None:
        write_report(report, json_path)
    return report


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write ``report`` as JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, default=float) + "\n")
    partial.replace(path)


def _folder_name(generator: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", generator) or "unnamed"


def _cell(value: float) -> str:
    return f"{value:.3f}" if np.isfinite(value) else "-"


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=160)
    table = Table(title=f"leave one generator out on {report['data']} "
                        f"(threshold: <= {report['settings']['target_fpr']:.0%} FPR on held-in val)")  # fmt: skip
    for column in ("held out", "learner", "train n", "held-out AI/real", "held-out ROC-AUC", "held-out bal@thr",
                   "held-out FPR@thr", "ref AI", "ref ROC-AUC", "ref bal@thr", "AUC gap"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("held out", "learner") else "right")
    for entry in report["results"]:
        counts = entry["counts"]
        for learner in entry["learners"]:
            held, ref = learner["heldout"], learner["reference"]
            table.add_row(
                entry["generator"], learner["learner"], str(counts["train"]),
                f"{counts['heldout_ai']}/{counts['heldout_real']}", _cell(held["roc_auc"]),
                _cell(held["balanced_accuracy_at_threshold"]), _cell(held["fpr_at_threshold"]),
                str(counts["reference_ai"]), _cell(ref["roc_auc"]), _cell(ref["balanced_accuracy_at_threshold"]),
                _cell(ref["roc_auc"] - held["roc_auc"]),
            )  # fmt: skip
    if not report["results"]:
        console.print(f"no generator qualifies (>= {report['settings']['min_sources']} sources); "
                      f"counts: {report['generator_counts']}")  # fmt: skip
    console.print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("training/data/cache/local-v3"),
                        help="folder with train/val/test.jsonl")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--top", type=int, default=4, help="hold out the N most frequent generators")
    parser.add_argument("--min-sources", type=int, default=8, help="only generators with this many source images")
    parser.add_argument("--generator", action="append", default=None, help="hold out these instead (repeatable)")
    parser.add_argument("--variant", default=baseline.DEFAULT_VARIANT)
    parser.add_argument("--coverage", default=None, help="tiles per image: centre|five|full (default: serving's)")
    parser.add_argument("--target-fpr", type=float, default=baseline.TARGET_FPR)
    parser.add_argument("--gamma-minutes", type=float, default=0.0, help="> 0: also fine-tune GAMMA per generator")
    parser.add_argument("--preset", default="local-effl0", help="training preset for the GAMMA learner")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="GAMMA TrainConfig override")
    parser.add_argument("--out", type=Path, default=Path("runs/cross-generator"), help="GAMMA runs go to OUT/<G>")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--baseline", action="store_true", help="also the frozen baseline on the ordinary split")
    parser.add_argument("--independent", type=Path, default=None, help="and on this manifest (with --baseline)")
    parser.add_argument("--no-fold-baseline", action="store_true",
                        help="leave the frozen baseline out of the folds (GAMMA only)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.no_fold_baseline and args.gamma_minutes <= 0 and not args.baseline:
        parser.error("--no-fold-baseline without --gamma-minutes or --baseline leaves nothing to run")
    torch.set_num_threads(args.threads)
    report = cross_generator(
        args.data, top=args.top, min_sources=args.min_sources, generators=args.generator, variant=args.variant,
        coverage=args.coverage, target_fpr=args.target_fpr, gamma_minutes=args.gamma_minutes, gamma_preset=args.preset,
        gamma_overrides=args.set, out=args.out, batch_size=args.batch_size,
        device=args.device, progress=not args.no_progress, with_baseline=args.baseline, independent=args.independent,
        fold_baseline=not args.no_fold_baseline, json_path=args.json,
    )  # fmt: skip
    if "baseline" in report:
        baseline.print_report(report["baseline"])
    if "baseline_independent" in report:
        baseline.print_report(report["baseline_independent"])
    print_report(report)
    return report


if __name__ == "__main__":
    main()
