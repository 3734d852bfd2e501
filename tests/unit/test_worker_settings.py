"""Settings come from GAMMA_* variables, CLI options win, and unsafe delivery settings are refused at start."""

from __future__ import annotations

import pytest

from gamma.tiling import DEFAULT_COVERAGE
from gamma.weights import DEFAULT_MODEL
from worker.settings import Settings


def test_env_vars_with_the_prefix_set_fields_and_ints_are_parsed() -> None:
    settings = Settings.from_env(
        {"GAMMA_DB_URL": "postgresql://db/gamma", "GAMMA_CHUNK_SIZE": "7", "GAMMA_MASKS_URL": "s3://m/p", "OTHER": "x"}
    )
    assert settings.db_url == "postgresql://db/gamma"
    assert settings.chunk_size == 7
    assert settings.masks_url == "s3://m/p"
    assert settings.broker_url == Settings().broker_url


def test_overrides_beat_env_and_none_overrides_are_ignored() -> None:
    env = {"GAMMA_MODEL": "from-env", "GAMMA_CHUNK_SIZE": "3"}
    settings = Settings.from_env(env, model="from-cli", chunk_size=None)
    assert settings.model == "from-cli"
    assert settings.chunk_size == 3


def test_as_env_reproduces_the_settings_in_a_child_process() -> None:
    settings = Settings(db_url="sqlite:///x.db", chunk_size=5, triton_url="127.0.0.1:8001")
    assert Settings.from_env(settings.as_env()) == settings


@pytest.mark.parametrize(
    "changes",
    [
        {"visibility_timeout_s": 300, "time_limit_s": 360},  # Redis would redeliver a task that is still running
        {"soft_time_limit_s": 400, "time_limit_s": 360},
        {"chunk_size": 0},
        {"retry_backoff_s": 0},
        {"retry_backoff_s": 200, "retry_backoff_max_s": 120},  # the first wait would exceed the cap
        {"max_retries": -1},
        {"max_deliveries": 0},
        {"retry_backoff_max_s": 3300},  # a retry countdown waits unacked: Redis would hand it out twice
    ],
)
def test_unsafe_combinations_are_refused(changes: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Settings(**changes)


def test_malformed_integer_env_var_is_an_error() -> None:
    with pytest.raises(ValueError):
        Settings.from_env({"GAMMA_CHUNK_SIZE": "lots"})


def test_the_default_model_is_the_detector_librarys_default() -> None:
    assert Settings().model == DEFAULT_MODEL


def test_the_submitting_side_does_not_load_torch() -> None:
    """gamma-submit never runs the model; importing torch would cost it seconds of CPU per invocation."""
    import subprocess
    import sys

    code = "import sys, worker.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_gamma_coverage_is_read_normalised_and_checked() -> None:
    assert Settings().coverage == DEFAULT_COVERAGE.value
    assert Settings.from_env({"GAMMA_COVERAGE": "FULL "}).coverage == "full"
    assert Settings.from_env({"GAMMA_COVERAGE": "full"}, coverage="centre").coverage == "centre"  # the option wins
    with pytest.raises(ValueError, match=r"unknown coverage 'most' \(choose centre\|five\|full\)"):
        Settings.from_env({"GAMMA_COVERAGE": "most"})
    assert Settings.from_env(Settings(coverage="centre").as_env()).coverage == "centre"
