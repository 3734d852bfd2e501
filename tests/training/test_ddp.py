"""DDP under torchrun on CPU (gloo): two ranks train on different shards and end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.synthetic import write_pattern_set

REPO = Path(__file__).resolve().parents[2]


def test_two_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    data = write_pattern_set(tmp_path / "data", n_train=32, n_val=8)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "tests" / "training" / "ddp_worker.py"), str(data), str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    different = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert not different, f"ranks diverged in {different[:5]}"
    # and training did happen: the best checkpoint and the resumable state were written by rank 0 only
    assert (out / "last.pt").is_file() and (out / "best" / "model.safetensors").is_file()
    initial = torch.load(out / "last.pt", weights_only=True)
    assert initial["epoch"] == 2


@pytest.mark.parametrize(("count", "world"), [(10, 2), (7, 3), (1, 2)])
def test_shards_cover_everything_with_equal_lengths(count: int, world: int) -> None:
    from training.distributed import DistInfo, shard

    shards = [shard(list(range(count)), DistInfo(rank, world)) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal step counts: no rank waits forever in an all-reduce
    assert set().union(*map(set, shards)) == set(range(count))
