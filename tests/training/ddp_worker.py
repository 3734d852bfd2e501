"""One rank of the DDP test (run by torchrun): trains briefly on CPU with gloo and saves this rank's weights."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from training import distributed
from training.config import TrainConfig, load_splits
from training.train import Trainer


def main(data: Path, out: Path) -> None:
    torch.set_num_threads(1)
    info = distributed.setup(prefer_cuda=False)
    config = dataclasses.replace(
        TrainConfig.named("local-b0"), train_crop=64, val_crop=64, micro_batch=4, batch_size=8,
        epoch_fraction=0.5, max_epochs=2, num_workers=0, max_minutes=0,
    )  # fmt: skip
    trainer = Trainer(config, load_splits(config, data), out, info, "local-b0", progress=False)
    trainer.fit()
    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(out / f"rank{info.rank}.safetensors"))
    distributed.cleanup(info)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
