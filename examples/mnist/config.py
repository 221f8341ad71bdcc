"""The trainer's configuration: one frozen dataclass, defaults documented here."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run.

    The RMSProp defaults (lr 1e-3 with cosine decay to 0, decay 0.9, eps 1e-8
    outside the root, no momentum) reach 99% test accuracy on real MNIST in 3
    epochs with the CNN.
    """

    model: str = "cnn"  # 'cnn' or 'mlp'
    mlp_widths: tuple[int, ...] = (10, 10)  # hidden widths of the mlp
    epochs: int = 3
    batch_size: int = 128  # global batch, split over the devices
    learning_rate: float = 1e-3
    schedule: str = "cosine"  # 'cosine' (decay to 0 over the run) or 'constant'
    decay: float = 0.9
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False
    state_dtype: str = "float32"  # 'float32', 'bfloat16' or 'int8' (8-bit block-quantized)
    seed: int = 0
    workdir: str = "runs/mnist"
    dataset: str = "mnist"
    dataset_explicit: bool = False  # --dataset given: no silent fallback
    data_dir: str | None = None
    resume: bool = False
    checkpoint_every: int = 500  # steps (at the next dispatch boundary); also at the end
    steps_per_dispatch: int = 8  # train steps per jitted call (unrolled lax.scan)
    max_steps: int | None = None  # stop early (a step budget for tests and CI)
    eval_batch_size: int = 1000
    progress: bool = True

    # Fields that must match for --resume to continue the same run.
    RESUMABLE = (
        "model", "mlp_widths", "epochs", "batch_size", "learning_rate", "schedule",
        "decay", "eps", "momentum", "centered", "state_dtype", "seed",
    )  # fmt: skip

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
