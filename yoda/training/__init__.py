"""Training with YODA masks (DESIGN.md §7).

    config.py   TrainConfig and LossConfig: the JSON schema of a run
    loss.py     diffusion_loss, the noise-level draw and the spaces' (x0, c)
    glue.py     model glue: a model from its config, the denoiser the loss calls, the card it samples with
    trainer.py  Trainer: AdamW + EMA, checkpoints with resume, validation PSNR, the CSV log
    report.py   train_main (`yoda train`) and the TRAINING.md record
    distributed.py  data-parallel training under torchrun: Ranks, the process group, each rank's share
    stopping.py the first Ctrl-C / SIGTERM stops after the step in progress and saves; a second aborts

Plots of training logs are in yoda.plots.
"""

from .config import LossConfig, TrainConfig
from .distributed import Ranks
from .loss import LossOutput, diffusion_loss, draw_noise_level, space_tensors, step_taus
from .report import train_main
from .trainer import Trainer

__all__ = ["LossConfig", "LossOutput", "Ranks", "TrainConfig", "Trainer", "diffusion_loss", "draw_noise_level",
           "space_tensors", "step_taus", "train_main"]
