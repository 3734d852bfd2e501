"""gamma-classify: folders expand to image files; one verdict (or error) per file, as a table or JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deploy.onnx_export import PROBABILITY_ATOL
from gamma.cli import main
from gamma.inference import Detector, TorchBackend
from gamma.weights import Checkpoint
from tests.fixtures.fake_backend import CountingBackend
from tests.fixtures.models import TINY_EXPORT_THRESHOLDS


def test_classifies_a_folder_as_json_lines(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(folder / "grey.png")
    Image.fromarray(np.zeros((520, 520, 3), np.uint8)).save(folder / "sub" / "black.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image and not listed")

    result = CliRunner().invoke(main, [str(folder), "--model", str(tiny_checkpoint.path), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    by_name = {Path(row["source"]).name: row for row in rows}
    assert set(by_name) == {"grey.png", "black.jpg", "broken.jpg"}
    broken = by_name["broken.jpg"]
    assert broken["verdict"] == "error" and broken["reason"] in {"truncated", "undecodable"}
    for name in ("grey.png", "black.jpg"):
        assert by_name[name]["verdict"] in {"real", "ai-generated", "manipulated", "needs-review"}
        assert 0.0 <= by_name[name]["probability"] <= 1.0


def test_table_output_and_empty_folder(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.webp")
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, [str(tmp_path), "--model", str(tiny_checkpoint.path)])
    assert result.exit_code == 0 and "a.webp" in result.output and "gamma-test" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, [str(empty), "--model", str(tiny_checkpoint.path)])
    assert result.exit_code != 0 and "no image files" in result.output


def test_onnx_option_runs_the_exported_graph(
    tiny_checkpoint: Checkpoint, tiny_onnx_export: Path, tmp_path: Path
) -> None:
    """--onnx judges with the export's graph and thresholds; the same verdicts as the torch path's for them."""
    Image.fromarray(np.full((520, 600, 3), 140, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = CliRunner().invoke(main, [str(tmp_path), "--onnx", str(tiny_onnx_export), "--json"])
    assert result.exit_code == 0, result.output
    rows = {Path(row["source"]).name: row for row in map(json.loads, result.output.splitlines())}
    assert rows["b.jpg"]["verdict"] == "error"
    torch_detector = Detector(
        TorchBackend(tiny_checkpoint.model, tiny_checkpoint.config.replace(thresholds=TINY_EXPORT_THRESHOLDS), "t")
    )
    expected = torch_detector.classify_files([tmp_path / "a.png"])[0].judgement
    assert expected is not None
    assert rows["a.png"]["verdict"] == expected.verdict.value
    assert abs(rows["a.png"]["probability"] - expected.probability) <= PROBABILITY_ATOL

    table = CliRunner(env={"COLUMNS": "300"}).invoke(main, [str(tmp_path / "a.png"), "--onnx", str(tiny_onnx_export)])
    assert table.exit_code == 0 and "gamma-test v1" in table.output
    both = CliRunner().invoke(main, [str(tmp_path), "--onnx", str(tiny_onnx_export), "--model", "x"])
    assert both.exit_code != 0 and "alternatives" in both.output


def test_coverage_full_reports_every_tile_seen_and_gamma_coverage_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--coverage (else GAMMA_COVERAGE) picks the tiles; each image says how many of its tiles were seen."""
    backend = CountingBackend(model_name="gamma-fake")
    monkeypatch.setattr(TorchBackend, "from_checkpoint", classmethod(lambda cls, *args, **kwargs: backend))
    monkeypatch.delenv("GAMMA_COVERAGE", raising=False)
    Image.new("RGB", (1600, 700), (200, 200, 200)).save(tmp_path / "wide.png")  # a 4 x 2 grid of 512-px tiles
    result = CliRunner().invoke(main, [str(tmp_path), "--json", "--coverage", "full"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert (row["coverage"], row["tiles_seen"], row["tiles_total"], row["seen_fraction"]) == ("full", 8, 8, 1.0)
    assert len(row["top_tile"]) == 4 and backend.images == 8

    table = CliRunner(env={"COLUMNS": "300", "GAMMA_COVERAGE": "centre"}).invoke(main, [str(tmp_path / "wide.png")])
    assert table.exit_code == 0 and "coverage centre" in table.output and "1/8" in table.output, table.output
    bad = CliRunner().invoke(main, [str(tmp_path), "--coverage", "half"])
    assert bad.exit_code != 0 and bad.output.strip().splitlines() == [
        "Error: unknown coverage 'half' (choose centre|five|full)"
    ]
