"""Issue 11: a command that cannot do its job says why in one line, with no traceback, and leaves nothing behind
(no database file, no ``failed`` scan row); the target is checked before the model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from worker import runtime as runtime_module
from worker.cli import scan, submit
from worker.db import Scan, make_engine, migrate, session_factory
from worker.html_report import main as report


def one_line_error(result: Result) -> str:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every model load (and fails it): the target must be refused before one is tried."""
    loads: list[str] = []

    def make_backend(settings: object) -> object:
        loads.append(str(getattr(settings, "model", "")))
        raise AssertionError("the model was loaded before the target was checked")

    monkeypatch.setattr(runtime_module, "make_backend", make_backend)
    monkeypatch.delenv("GAMMA_TRITON_URL", raising=False)
    return loads


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("nope_relative", "no such folder"),  # not s3://nope_relative/: a path that does not exist
        ("mine/x.jpg", "is a file, not a folder"),  # not s3://mine/x.jpg
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("ftp://host/x", "expected s3://BUCKET/PREFIX or a folder"),
    ],
)
def test_a_bad_target_is_one_line_before_the_model_loads_and_records_nothing(
    target: str, says: str, tmp_path: Path, no_model: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.jpg").write_bytes(b"x")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "must-not-be-used")  # any AWS call would be a bug here
    db = tmp_path / "gamma.db"
    for command, extra in ((scan, ["--model", "whatever"]), (submit, ["--broker", "memory://"])):
        line = one_line_error(CliRunner().invoke(command, [target, "--db", f"sqlite:///{db}", *extra]))
        assert says in line, line
        assert "credentials" not in line.lower()  # no AWS call was made
        if target == "nope_relative":
            assert line.endswith("(a bucket needs s3://, e.g. s3://nope_relative)"), line
    assert no_model == []
    assert not db.exists()


def test_a_model_that_cannot_be_found_is_one_line_and_records_nothing(tmp_path: Path) -> None:
    (tmp_path / "D").mkdir()
    db = tmp_path / "gamma.db"
    result = CliRunner().invoke(scan, [str(tmp_path / "D"), "--db", f"sqlite:///{db}", "--model", "gamma-b2"])
    line = one_line_error(result)
    assert "gamma-b2" in line, line
    assert not db.exists()  # the model is loaded before the database is opened: no stray file, no failed row


def test_a_model_error_leaves_no_scan_row_in_an_existing_database(tmp_path: Path) -> None:
    (tmp_path / "D").mkdir()
    db = f"sqlite:///{tmp_path / 'gamma.db'}"
    migrate(make_engine(db))
    one_line_error(CliRunner().invoke(scan, [str(tmp_path / "D"), "--db", db, "--model", str(tmp_path / "none")]))
    with session_factory(make_engine(db))() as session:
        assert session.scalar(select(func.count()).select_from(Scan)) == 0


def test_gamma_report_on_a_database_that_is_not_there_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line_error(CliRunner().invoke(report, ["1", "--html", "x.html", "--db", "sqlite:///none.db"]))
    assert "none.db" in line
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "x.html").exists()


def test_gamma_report_on_a_database_without_gamma_tables(tmp_path: Path) -> None:
    import sqlite3

    sqlite3.connect(tmp_path / "other.db").execute("create table t (x)").connection.close()
    args = ["1", "--html", str(tmp_path / "x.html"), "--db", f"sqlite:///{tmp_path / 'other.db'}"]
    assert "not a gamma database" in one_line_error(CliRunner().invoke(report, args))


def test_gamma_report_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'gamma.db'}"
    migrate(make_engine(db))
    line = one_line_error(CliRunner().invoke(report, ["2", "--html", str(tmp_path / "missing/dir/x.html"), "--db", db]))
    assert "missing/dir" in line
    # and a scan that is not there, in a database that is
    assert "no scan 2" in one_line_error(
        CliRunner().invoke(report, ["2", "--html", str(tmp_path / "x.html"), "--db", db])
    )
