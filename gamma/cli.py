"""``gamma-classify``: classify image files or folders in-process and print a verdict per image.

No queue, no database, no server: the detector library on its own. ``gamma-scan`` (worker/) is the full
pipeline with a database and masks; this is the quickest way to ask the model about a few files.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from gamma.inference import Detector
from gamma.preprocess import warn_if_no_heif
from gamma.tiling import DEFAULT_COVERAGE, parse_coverage
from gamma.weights import DEFAULT_MODEL, WeightsError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}


def expand(paths: tuple[Path, ...]) -> list[Path]:
    """Files as given, and the image files under each folder (recursively, sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Checkpoint name or folder.")
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(exists=True, path_type=Path),
    help="Run an exported version through ONNX Runtime instead of a checkpoint through torch: its model.onnx or "
    "version folder (deploy/export_triton.py output; thresholds from its metadata.json).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image instead of a table.")
@click.option(
    "--coverage",
    envvar="GAMMA_COVERAGE",
    default=None,
    help="Which tiles of each image the model sees: centre (one), five (centre + corners) or full (every tile) "
    f"[env GAMMA_COVERAGE; default {DEFAULT_COVERAGE.value}].",
)
@click.pass_context
def main(
    ctx: click.Context,
    paths: tuple[Path, ...],
    model: str,
    onnx_path: Path | None,
    as_json: bool,
    coverage: str | None,
) -> None:
    """Classify PATHS (files or folders) as real, ai-generated, manipulated or needs-review."""
    if onnx_path is not None and ctx.get_parameter_source("model") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--model and --onnx are alternatives; give one")
    try:  # before the model loads: a typo costs no seconds
        mode = parse_coverage(coverage)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    files = expand(paths)
    if not files:
        raise click.UsageError("no image files found")
    warn_if_no_heif(stderr=True)
    try:
        detector = (
            Detector.from_onnx(onnx_path, coverage=mode)
            if onnx_path is not None
            else Detector.from_checkpoint(model, coverage=mode)
        )
    except WeightsError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:  # streamed: a line per image as its chunk finishes, however many files
        for result in detector.iter_files(files):
            click.echo(json.dumps(result.to_dict()))
        return
    results = detector.classify_files(files)
    backend = detector.backend
    table = Table(title=f"{backend.model_name} v{backend.model_version}, coverage {mode.value}")
    for column in ("image", "verdict", "p(AI)", "AI area", "manipulated area", "tiles"):
        table.add_column(column, justify="left" if column in ("image", "verdict") else "right")
    for result in results:
        if result.judgement is None:
            assert result.error is not None
            table.add_row(result.source, f"error: {result.error.reason}", "", "", "", "")
        else:
            j = result.judgement
            seen = f"{result.tiles.plan.tiles_seen}/{result.tiles.plan.grid}" if result.tiles is not None else ""
            table.add_row(
                result.source,
                j.verdict.value,
                f"{j.probability:.3f}",
                f"{j.ai_area:.1%}",
                f"{j.manipulated_area:.1%}",
                seen,
            )
    Console().print(table)


if __name__ == "__main__":
    main()
