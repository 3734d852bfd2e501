"""Memory of listing a large prefix into a scan: 10k, 100k and 1M keys through boto3's real paginator.

    python bench/listing_memory.py [--counts 10000,100000,1000000] [--no-trace]

The bucket is fabricated page by page by a botocore ``before-call`` hook (tests/fake_listing.py): the real
``list_objects_v2`` paginator, ``worker.scans.list_into_scan`` with its real registration of every key in
SQLite (on /dev/shm when there is one), and a dispatch that counts chunks. Each measurement runs in a fresh
process and reports:

- peak RSS above the RSS just before the listing (``VmHWM`` - ``VmRSS``): everything, C allocations included;
- tracemalloc's peak of Python allocations during the listing (a second, traced run, about 4x slower);
- seconds (untraced run) — for orientation only, this machine is shared.

O(1) means both memory columns stay flat as the key count grows tenfold; the last line prints the 1M/100k ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def measure(count: int, folder: Path, trace: bool) -> dict[str, Any]:
    db = folder / f"{count}-{'traced' if trace else 'plain'}.db"
    command = [sys.executable, "-m", "tests.fake_listing", str(count), str(db), *(["--trace"] if trace else [])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10000,100000,1000000")
    parser.add_argument("--no-trace", action="store_true", help="skip the tracemalloc runs (the slow half)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    rows = []
    try:
        for count in counts:
            plain = measure(count, folder, trace=False)
            traced = None if args.no_trace else measure(count, folder, trace=True)
            assert plain["total"] == plain["keys"] == count, plain
            rows.append((count, plain, traced))
            print(
                f"{count:>9,} keys  {plain['chunks']:>6} chunks  {plain['pages']:>5} pages  "
                f"peak RSS +{plain['rss_growth_kib'] / 1024:6.2f} MiB  "
                + (f"tracemalloc peak {traced['traced_peak_bytes'] / 2**20:6.2f} MiB  " if traced else "")
                + f"{plain['seconds']:7.2f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    by_count = {count: (plain, traced) for count, plain, traced in rows}
    if 100_000 in by_count and 1_000_000 in by_count:
        (small, small_traced), (large, large_traced) = by_count[100_000], by_count[1_000_000]
        line = f"1M / 100k: peak RSS growth x{large['rss_growth_kib'] / small['rss_growth_kib']:.2f}"
        if small_traced and large_traced:
            line += f", tracemalloc peak x{large_traced['traced_peak_bytes'] / small_traced['traced_peak_bytes']:.2f}"
        print(line + " (1.00 = O(1) in the number of keys)")


if __name__ == "__main__":
    main()
