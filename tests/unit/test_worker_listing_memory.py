"""Listing a million-key prefix into a scan holds O(1) memory: boto3's real ``list_objects_v2`` paginator over a
fabricated bucket (tests/fake_listing.py), the real registration in SQLite, a dispatch that counts chunks.

Each measurement runs in a fresh process (``VmHWM`` is a high-water mark for a process's life), all at once.
The peak resident memory above the pre-listing baseline must be the same at 1,000,000 keys as at 100,000; a
control run that keeps every chunk shows the measurement sees what 100,000 retained refs cost. tracemalloc
(Python allocations only, ~4x slower) compares 10,000 with 100,000 keys; ``bench/listing_memory.py`` prints it
for 1,000,000 too.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MIB = 1024  # rss figures are KiB


def _run_all(runs: dict[str, list[str]], folder: Path) -> dict[str, dict[str, Any]]:
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "tests.fake_listing", args[0], str(folder / f"{name}.db"), *args[1:]],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in runs.items()
    }
    results = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {err[-2000:]}"
        results[name] = json.loads(out.strip().splitlines()[-1])
    return results


@pytest.mark.slow
def test_a_million_key_listing_holds_what_a_hundred_thousand_key_listing_holds(tmp_path: Path) -> None:
    # SQLite on tmpfs where there is one: the point is memory, and a thousand fsyncs would only add minutes.
    folder = Path(tempfile.mkdtemp(dir="/dev/shm")) if Path("/dev/shm").is_dir() else tmp_path
    try:
        runs = _run_all(
            {
                "1m": ["1000000"],
                "100k": ["100000"],
                "100k-retaining": ["100000", "--retain"],
                "100k-traced": ["100000", "--trace"],
                "10k-traced": ["10000", "--trace"],
            },
            folder,
        )
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder, ignore_errors=True)
    for run in runs.values():  # every key listed once, page by page, and dispatched in full chunks
        count = run["count"]
        assert run["total"] == run["keys"] == count
        assert run["chunks"] == math.ceil(count / 32) and run["largest"] == 32
        assert run["pages"] == math.ceil(count / 1000) and run["page_sizes"] == [1000]
    growth = {name: run["rss_growth_kib"] for name, run in runs.items()}
    print(f"peak RSS above baseline (KiB): {growth}")
    print(f"tracemalloc peak (bytes): 10k {runs['10k-traced']['traced_peak_bytes']}, "
          f"100k {runs['100k-traced']['traced_peak_bytes']}")  # fmt: skip
    # The O(n) mistake is visible: keeping 100,000 refs costs tens of MiB (a million would cost hundreds).
    assert growth["100k-retaining"] > growth["100k"] + 16 * MIB
    # O(1): ten times the keys, the same peak (within allocator noise), and small in absolute terms.
    assert growth["1m"] <= growth["100k"] + 8 * MIB
    assert growth["1m"] < 32 * MIB
    traced_10k, traced_100k = runs["10k-traced"]["traced_peak_bytes"], runs["100k-traced"]["traced_peak_bytes"]
    assert traced_100k <= 1.25 * traced_10k + 512 * 1024
    assert traced_100k < 8 * 1024 * 1024
