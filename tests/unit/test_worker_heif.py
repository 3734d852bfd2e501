"""Without pillow-heif, the worker and the CLIs say at start-up, once, that HEIF/HEIC will be unsupported-format."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import gamma.preprocess as preprocess
from gamma.preprocess import HEIF_MISSING, ImageRejected, heif_available, warn_if_no_heif

HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64  # a HEIF header, nothing decodable


def _reset() -> None:
    preprocess._accepted_formats.cache_clear()
    preprocess._heif_warned = False


@pytest.fixture
def no_heif(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import pillow_heif` raises ImportError
    _reset()
    yield
    monkeypatch.undo()
    _reset()  # the next user registers pillow-heif again (if installed)


@pytest.mark.usefixtures("no_heif")
def test_without_pillow_heif_the_warning_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    assert not heif_available()
    with caplog.at_level(logging.WARNING, logger="gamma.preprocess"):
        assert warn_if_no_heif() is False
        assert warn_if_no_heif() is False
    assert [r.getMessage() for r in caplog.records] == [HEIF_MISSING]
    assert "unsupported-format" in HEIF_MISSING and "HEIC" in HEIF_MISSING
    with pytest.raises(ImageRejected) as rejected:  # what the warning promises
        preprocess.preprocess(HEIC)
    assert rejected.value.reason == "unsupported-format"


def test_with_pillow_heif_nothing_is_said(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("pillow_heif")
    _reset()
    with caplog.at_level(logging.WARNING):
        assert warn_if_no_heif(stderr=True) is True
    assert heif_available() and not caplog.records


@pytest.mark.usefixtures("no_heif")
def test_the_worker_warns_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from worker import tasks
    from worker.settings import Settings

    monkeypatch.setattr(tasks, "settings", Settings(db_url=f"sqlite:///{tmp_path / 'gamma.db'}"))
    with caplog.at_level(logging.WARNING):
        tasks._migrate()
    assert HEIF_MISSING in [r.getMessage() for r in caplog.records]


def _one_stderr_line(stderr: str) -> None:
    assert stderr.count(HEIF_MISSING) == 1
    assert f"warning: {HEIF_MISSING}\n" in stderr


@pytest.mark.usefixtures("no_heif")
def test_gamma_scan_warns_on_stderr(tmp_path: Path) -> None:
    from worker.cli import scan

    (tmp_path / "images").mkdir()
    db = f"sqlite:///{tmp_path / 'gamma.db'}"
    # a model that is not there: the command stops right after its start-up checks
    result = CliRunner().invoke(scan, [str(tmp_path / "images"), "--db", db, "--model", str(tmp_path / "none")])
    assert result.exit_code == 1
    _one_stderr_line(result.stderr)


@pytest.mark.usefixtures("no_heif")
def test_gamma_classify_warns_on_stderr(tmp_path: Path) -> None:
    from gamma.cli import main

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(main, [str(tmp_path / "a.png"), "--model", str(tmp_path / "none")])
    assert result.exit_code == 1
    _one_stderr_line(result.stderr)
