"""Fine-tuning: the yoda model file a run starts from (``--init``), checked against the config it is to train.

A file fits when it holds the config's model (its kind and every architecture argument, defaults included), in the
config's space, predicting its target, at its scale, on its schedule. Arguments that change only how the model
trains (TRAINING_ONLY: dropout) may differ, with a warning. up(lr) is the file's own (``upsampling``: Pillow's for a
released SR3 model saved with yoda.save_model, MATLAB's for SRDiff's): the run trains with it, and the exported
model keeps it, so a fine-tune changes the weights, not what the model is given.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from .._io import file_sha256
from ..checkpoint import check_path
from ..errors import UserError

TRAINING_ONLY = ("dropout",)  # model arguments that change how a model trains, not what it computes
# compared through the card instead: the SR factor (save_model writes SR3's from the card; a config may leave it
# out) and SRDiff's upstream schedule fields (a card's schedule is the model's; its betas are compared)
ON_THE_CARD = ("scale", "sr_scale", "timesteps", "beta_schedule", "beta_s", "beta_end")

FINE_TUNE_HINT = ("an upstream SR3 *_gen.pth or SRDiff model_ckpt_steps_*.ckpt fine-tunes once saved as a yoda model "
                  "file: yoda.save_model(yoda.load('sr3', PATH, config=JSON), 'init.safetensors') (or 'srdiff'), "
                  "then --init init.safetensors")


def resolved_args(kind: str, args: dict) -> dict:
    """Every constructor argument of a model of ``kind`` built from ``args``, defaults filled in."""
    from ..models.yoda_format import model_config

    return dataclasses.asdict(model_config(kind, dict(args)))


def read_init(path: str, cfg, card) -> tuple[torch.nn.Module, str]:
    """(the module of the yoda model file ``path``, its sha256), or a ValueError naming what differs from the config
    ``cfg`` (a TrainConfig) whose model ``card`` (glue.model_card) the run trains."""
    from ..models.loading import embedded_card
    from ..models.yoda_format import load_yoda

    where = f"init (--init) {path}"
    try:
        digest = file_sha256(check_path(path))
        src = load_yoda(path, FINE_TUNE_HINT)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"init (--init): {e}") from e
    except (OSError, ValueError, UserError) as e:  # CheckpointError is a UserError
        raise ValueError(f"init (--init): {e}") from e
    if file_sha256(path) != digest:
        raise ValueError(f"{where}: the file changed while it was read; start again when nothing writes it")
    src.card = embedded_card(src.card, path)  # the embedded model's DDIM 1 step, as yoda.load gives it
    for what in ("space", "prediction", "scale"):
        if getattr(src.card, what) != getattr(card, what):
            raise ValueError(f"{where}: the file's model has {what} {getattr(src.card, what)!r}, this config trains "
                             f"{what} {getattr(card, what)!r}")
    if not torch.equal(src.card.schedule.betas, card.schedule.betas):
        raise ValueError(f"{where}: the file's model was trained on another schedule ({src.card.schedule!r}) than "
                         f"this config's ({card.schedule!r})")
    kind = cfg.model["kind"]
    file_cfg = (src.card.config or {})
    if file_cfg.get("kind", kind) != kind:
        raise ValueError(f"{where}: the file's model is {file_cfg['kind']!r}, the config's {kind!r}")
    have = resolved_args(kind, file_cfg.get("args", {}))
    want = resolved_args(kind, {k: v for k, v in cfg.model.items() if k != "kind"})
    other = sorted(k for k in want if k not in ON_THE_CARD and want[k] != have.get(k))
    arch = [k for k in other if k not in TRAINING_ONLY]
    if arch:  # (a config leaving out clip_input trained and exported an SRDiff whose file said clip_input False)
        raise ValueError(f"{where}: the file's model differs from the config's model in "
                         + ", ".join(f"{k} ({have.get(k)!r}, the config {want[k]!r})" for k in arch)
                         + " (defaults included: name the file's values in the config's model)")
    if other:
        warnings.warn(f"{where}: fine-tuned with the config's "
                      + ", ".join(f"{k} {want[k]!r} (the file's model {have.get(k)!r})" for k in other),
                      UserWarning, stacklevel=3)
    return src, digest
