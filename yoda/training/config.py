"""The JSON schema of a training run: TrainConfig (saved next to the weights, in config.json and in every
checkpoint) and LossConfig, the switches of the loss of DESIGN.md §7.

Both are frozen dataclasses round-tripped through JSON (to_dict / from_dict); unknown keys and values of the
wrong JSON type (checked against the field types, data.* included) are refused, naming the key. A
resumed run must have the config it was started with (Trainer.load_checkpoint compares them), so the field
names and their JSON forms are a file format: change them only with a migration.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import numbers
import os
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from yoda_kernels.contract import PREDICTIONS

from .. import data as _data
from .._io import unportable
from .._json_fields import (_python_numbers, check_field_types, json_type_name, json_type_ok, read_config_text,
                            unknown_keys)
from ..adapters import SPACES
from ..masks import check_lower_bound
from ..models.yoda_format import SPACE_OF_KIND, model_config as _model_config

LOSSES = ("l1", "l2")
TARGETS = PREDICTIONS  # what the model is trained to predict is what the sampler is told it predicts
NOISE_LEVELS = ("continuous", "discrete")


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class LossConfig:
    """The training loss. With mask_input = mask_loss = False it is the base model's own loss."""

    space: str = "pixel"  # "pixel" (SR3: c = up(lr)) | "residual" (SRDiff: x0 = (HR - up(lr)) * k, c = 0)
    mask_input: bool = False  # YODA input mixing: inactive pixels are noised c instead of noised x0
    mask_loss: bool = False  # average the loss over the active pixels (A >= tau) only
    loss: str = "l1"  # "l1" | "l2"
    target: str = "eps"  # "eps" | "x0" | "v" (v = sqrt(ab) eps - sqrt(1 - ab) x0): what the model predicts
    noise_level: Optional[str] = None  # "continuous" (SR3) | "discrete" (sqrt(ab[idx]) exactly); None: by space
    lower_bound: float = 0.6  # l in tau = t/T - l (DESIGN.md §4)
    residual_scale: float = 2.0  # k of the residual space (SRDiff)
    same_t_in_batch: bool = False  # one t for the whole batch, as Janspiry's SR3 p_losses

    def __post_init__(self):
        check_field_types(self)
        _check_choice("space", self.space, SPACES)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("target", self.target, TARGETS)
        if self.noise_level is None:  # SR3 conditions on a continuous level; SRDiff on the integer step
            object.__setattr__(self, "noise_level", "continuous" if self.space == "pixel" else "discrete")
        _check_choice("noise_level", self.noise_level, NOISE_LEVELS)
        object.__setattr__(self, "lower_bound", check_lower_bound(self.lower_bound))
        if self.yoda and self.lower_bound >= 1.0:  # tau = t/T - l <= 0 at every t: every mask is all ones
            warnings.warn(f"loss: lower_bound {self.lower_bound:g} >= 1 makes every YODA mask all ones: mask_input / "
                          f"mask_loss change nothing, and the run trains as plain training under a YODA label; "
                          f"give lower_bound < 1 (e.g. 0.6)", UserWarning, stacklevel=3)
        if not self.residual_scale > 0:
            raise ValueError(f"residual_scale must be > 0, got {self.residual_scale}")
        if self.space == "residual" and self.noise_level == "continuous":
            # SRDiff's denoiser is told the integer step index, so x_t must be noised to exactly ab[idx]
            raise ValueError('noise_level must be "discrete" for space="residual" (SRDiff conditions on the '
                             "integer step, not on a continuous noise level)")

    @property
    def yoda(self) -> bool:
        return self.mask_input or self.mask_loss


def _default_model() -> dict:
    # yoda.models.SR3UNet.tiny_x4_config(): fully convolutional, 2.76 M parameters (11 MB fp32)
    return {
        "kind": "sr3",
        "in_channel": 6,
        "out_channel": 3,
        "inner_channel": 32,
        "norm_groups": 16,
        "channel_mults": [1, 2, 2, 4],
        "attn_res": [],
        "res_blocks": 1,
        "dropout": 0.0,
        "with_noise_level_emb": True,
        "image_size": 64,
        "mid_attn": False,
        "scale": 4,
    }


def _default_schedule() -> dict:
    return {"kind": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 2e-2}


CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # yoda/configs/, installed with the package


def _packaged_config(path: str) -> str:
    """``path``, or the installed config it names when it is a bare name (no folder) that is not a file here (a
    folder of that name, e.g. `--out default_x4` of an earlier run, hides nothing: the same command resumes)."""
    if os.path.isfile(path) or os.path.dirname(path):
        return path
    for name in (path, path + ".json"):
        if (CONFIGS / name).is_file():
            if os.path.isfile(name):  # a copy made to edit, named as the installed one: which was meant?
                raise ValueError(f"config {path!r} names both the installed {CONFIGS / name} and {name} here: give "
                                 f"./{name} for the file here, or the installed path")
            return str(CONFIGS / name)
    return path


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved next to the weights and round-tripped through JSON.

    ``lr`` is the learning rate (the JSON key is kept for existing configs and checkpoints); the LR image is
    never a config field."""

    name: str = "run"
    model: dict = field(default_factory=_default_model)  # {"kind": "sr3"|"srdiff", **constructor args}
    schedule: dict = field(default_factory=_default_schedule)  # {"kind": "linear"|"cosine", "T", ...}
    data: _data.DataConfig = field(default_factory=_data.DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    attention: str = "edge"  # yoda.attention.get(name): the A of the YODA masks (used if loss.yoda)
    batch: int = 16
    steps: int = 1000
    lr: float = 1e-4  # learning rate of AdamW
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup: int = 0  # linear learning-rate warm-up steps
    decay_from: int = 0  # linear learning-rate decay from this step to 0 at `steps` (0: constant after warm-up)
    grad_clip: float = 1.0  # max global grad norm (0: off)
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 10
    val_every: int = 0  # steps between validation runs (0: no validation)
    val_steps: int = 20  # DDIM steps of validation sampling
    ckpt_every: int = 0  # steps between checkpoints (0: only at the end)
    init: str = ""  # weights to start from (a yoda model file, e.g. an earlier run's export; "": a random init)
    # how the exported model samples where a call names nothing (its ModelCard.sampling: the sampler and steps of
    # yoda.sample and of the CLI), e.g. {"sampler": "ddim", "steps": 1} for an x0 model like the embedded one; {}: none
    # (yoda.sample then takes DDPM over every step, the CLI 50 steps)
    sampling: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("model", "schedule", "sampling"):  # free-form objects: kept as their JSON reads back
            object.__setattr__(self, name, _json_form(getattr(self, name), name))
        if isinstance(self.data, dict):
            object.__setattr__(self, "data", _from_dict(_data.DataConfig, self.data, "data"))
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", _from_dict(LossConfig, self.loss, "loss"))
        check_field_types(self)  # built in Python, not through from_dict: batch="8" or 8.5 would pass below
        for name in ("batch", "steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "decay_from", "log_every", "val_every", "val_steps", "ckpt_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.decay_from and self.decay_from >= self.steps:  # the decay would start after the run's end
            raise ValueError(f"decay_from ({self.decay_from}) must be below steps ({self.steps}), the step at which "
                             f"the learning rate has decayed to 0 (decay_from 0: no decay)")
        if 0 < self.decay_from < self.warmup:  # warm-up would hold the rate, then it would drop at once
            raise ValueError(f"decay_from ({self.decay_from}) must not be below warmup ({self.warmup}): the decay "
                             "starts from the full learning rate, after the warm-up (--warmup changes it)")
        if why := unportable(self.name) if isinstance(self.name, str) else "not a string":
            raise ValueError(f"name must be a plain folder name (a run without --out goes to runs/<name>), got "
                             f"{self.name!r} ({why})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= 2**32 - 1:
            raise ValueError(f"seed must be an int in [0, 2**32 - 1], got {self.seed!r}")
        from ..attention import check_name

        try:  # a misspelt name failed only when a resume switched validation on (the extractor is made when used)
            check_name(self.attention)
        except (TypeError, ValueError) as e:
            raise ValueError(f"attention: {e}") from None
        if self.sampling:
            from ..models.card import check_sampling

            T = self.schedule.get("T", 1000)  # a bad T is make_schedule's error, not this one's
            check_sampling(self.sampling, "sampling", T if type(T) is int and T >= 1 else None)
        if self.init and not self.init.strip():
            raise ValueError(f"init must be the path of a yoda model file (.safetensors) or empty, got {self.init!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1) (AdamW's), got {list(self.betas)}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):  # NaN passed "< 0" and blamed the loss
            raise ValueError(f"grad_clip must be a finite float >= 0 (0: off), got {self.grad_clip}")
        if self.schedule.get("kind") not in ("linear", "cosine"):
            raise ValueError(f"schedule.kind must be 'linear' or 'cosine', got {self.schedule.get('kind')!r}")
        if self.model.get("kind") == "sr3":  # the network sees [x_t, up(lr)] and predicts an RGB image
            io = (self.model.get("in_channel", 6), self.model.get("out_channel", 3))
            if io != (6, 3):
                raise ValueError(f"model.in_channel and model.out_channel must be 6 and 3 for SR3 (the noisy image "
                                 f"and up(lr) in, 3 channels out), got {io[0]} and {io[1]}")
        space = model_space(self.model)
        if space != self.loss.space:
            default = " (the default, which a config without a model section gets)" if self.model == _default_model() \
                else ""
            raise ValueError(f"model.kind {self.model['kind']!r}{default} is trained in the {space} space, but "
                             f"loss.space is {self.loss.space!r}")
        # the model's own scale (SR3Config.scale, None: unknown; SRDiffConfig.sr_scale, default 4) is what the
        # exported file says it upscales by; the model card says data.scale: both must be the scale it learnt
        key = "sr_scale" if space == "residual" else "scale"
        scale = self.model.get(key, 4 if space == "residual" else None)
        if scale is not None and scale != self.data.scale:
            raise ValueError(f"model.{key} ({scale!r}) and data.scale ({self.data.scale}) must be equal: the model "
                             f"file would say x{scale} but be trained on x{self.data.scale} LR images")
        k = self.model.get("res_rescale", 2.0) if space == "residual" else None
        if k is not None and float(k) != float(self.loss.residual_scale):
            # the exported model decodes with model.res_rescale: both must be the k the model was trained with
            raise ValueError(f"model.res_rescale ({k}) and loss.residual_scale ({self.loss.residual_scale}) must "
                             f"be equal: the model file decodes residuals with the former")

        if space == "residual":  # upstream SRDiff sets its schedule in the model's hparams; here schedule does
            linear = self.schedule.get("kind") == "linear"
            mine = {"timesteps": self.schedule.get("T", 1000), "beta_schedule": self.schedule.get("kind"),
                    # accepted and ignored, while the exported file's SRDiffConfig said them (the card the schedule)
                    "beta_end": self.schedule.get("beta_end", 2e-2) if linear else None,
                    "beta_s": None if linear else self.schedule.get("s", 0.008)}
            for key, want in mine.items():
                if key in self.model and self.model[key] != want:
                    told = (f"is no parameter of the {self.schedule.get('kind')} schedule trained on" if want is None
                            else f"disagrees with the schedule trained on (schedule: {want!r})")
                    raise ValueError(f"model.{key} ({self.model[key]!r}) {told}; set the schedule in 'schedule' and "
                                     f"leave model.{key} out")
        model_config(self.model)  # the model's arguments and the schedule, as the trainer takes them (nothing is
        self.make_schedule()  # built): refused here, not when a Trainer is made (load's errors name the file)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _from_dict(cls, d, "config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text, object_pairs_hook=_once_each))

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        """A JSON file; a bare name that is not a file (``default_x4``, ``default_x4.json``) is one of the configs
        installed with the package (yoda/configs/), so they are at hand outside a clone too."""
        path = _packaged_config(path)
        try:  # (its own errors name the file: a device or a pipe, a file over 16 MB)
            text = read_config_text(path, "config file")
        except FileNotFoundError:
            names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.json")))
            raise ValueError(f"config file not found: {path} (the installed configs, by name: {names})") from None
        except IsADirectoryError:
            raise ValueError(f"config file {path} is a folder; --config takes a JSON file (or an installed "
                             f"config's name)") from None
        try:
            return cls.from_json(text)
        except json.JSONDecodeError as e:
            hint = (" (JSON has no comments and no trailing commas)"  # (not for a file cut short: ',' delimiter)
                    if e.msg in ("Expecting property name enclosed in double quotes", "Expecting value") else "")
            raise ValueError(f"config file {path} is not valid JSON: {e}{hint}") from None
        except RecursionError:  # json's (and the dataclasses') recursion into a thousand-deep nest: a traceback
            raise ValueError(f"config file {path} is nested too deeply to be a config") from None
        except (TypeError, ValueError) as e:  # a field's error named the key, not the file that holds it
            raise (TypeError if isinstance(e, TypeError) else ValueError)(f"config file {path}: {e}") from None

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def learning_rate(self, step: int) -> float:
        """The learning rate at ``step``: lr after a linear warm-up of warmup steps, then (decay_from > 0) falling
        linearly from lr at step decay_from to 0 at step ``steps``."""
        if self.warmup and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.decay_from and step >= self.decay_from:
            return self.lr * max(self.steps - step, 0) / max(self.steps - self.decay_from, 1)
        return self.lr

    @property
    def validates(self) -> bool:
        """Whether the run validates (val_every > 0 and data.val_crops > 0): only then is data.val_source read."""
        return bool(self.val_every and self.data.val_crops)

    def make_schedule(self):
        from ..schedule import MAX_FILE_T, Schedule

        s = dict(self.schedule)
        kind = s.pop("kind")
        make = Schedule.linear if kind == "linear" else Schedule.cosine
        known = set(inspect.signature(make).parameters)
        if set(s) - known:  # Python's "got an unexpected keyword argument 'beta_strat'"
            raise ValueError(f"unknown key(s) in schedule: {unknown_keys(sorted(set(s) - known), known | {'kind'})}")
        T = s.get("T")
        if isinstance(T, numbers.Integral) and T > MAX_FILE_T:  # T = 3e8 ran 34 s into 7 GB, then "out of memory"
            raise ValueError(f"schedule.T {T} is over {MAX_FILE_T}, the longest schedule yoda reads from a file "
                             f"(released models use at most 4000 steps)")
        try:
            return make(**s)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config schedule {self.schedule}: {e}") from None


def absolute_folders(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with image-folder sources (~ expanded), an attention's weights file (dino-vits8:PATH) and the init
    file made absolute (against the working folder, as --data-dir and --init): a relative one was stored relative,
    so config.json and a resume from another folder read other images or weights, or none."""
    d = cfg.data
    for key, v in (("source", d.source), ("val_source", d.val_source if cfg.validates else None)):
        if v in _data.NAMED_SOURCES and os.path.isdir(v):  # the user's folder, or the named images?
            raise ValueError(f"data.{key} {v!r} names yoda's {v} source (a named source, never a folder) while a "
                             f"folder {v}/ lies here: give \"./{v}\" in the config for the folder")
    fix = {k: os.path.abspath(os.path.expanduser(v)) for k, v in (("source", d.source), ("val_source", d.val_source))
           if v not in _data.NAMED_SOURCES and not os.path.isabs(v)}  # (a JSON's "~/photos", as the shell would)
    out = cfg.replace(data=dataclasses.replace(d, **fix)) if fix else cfg
    init = os.path.abspath(os.path.expanduser(cfg.init)) if cfg.init else ""  # (a config file's, not --init's)
    return out.replace(attention=weights_path(cfg.attention, os.path.abspath), init=init)


def weights_path(attention: str, resolve) -> str:
    """An attention name with its weights file (dino-vits8:PATH) passed through ``resolve`` (os.path.abspath,
    realpath), ~ expanded; a name without one as it is."""
    name, sep, path = attention.partition(":")
    return f"{name}:{resolve(os.path.expanduser(path))}" if sep and path.strip() else attention


def _once_each(pairs: list) -> dict:
    """json's object_pairs_hook: a key given twice in one object is an error (json keeps the last, silently)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} is given twice in one object; give it once")
        out[k] = v
    return out


def model_config(spec: Any):
    """The config dataclass (SR3Config / SRDiffConfig) of a model spec {"kind": ..., **constructor args}: its
    arguments checked without building the model; errors said of the config's "model" section."""
    model_space(spec)
    try:
        return _model_config(spec["kind"], {k: v for k, v in spec.items() if k != "kind"})
    except TypeError as e:
        raise ValueError(f"bad model arguments for {spec['kind']}: {e}") from None
    except ValueError as e:  # the config's own words, said of its section
        raise ValueError(f"model: {e}") from None


def model_space(spec: Any) -> str:
    """The space ("pixel" / "residual") a model spec {"kind": "sr3" | "srdiff", **constructor args} is trained in;
    ValueError for any other spec (a list or dict as kind was a TypeError of the lookup, not a config error)."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if not isinstance(kind, str) or kind not in SPACE_OF_KIND:
        raise ValueError(f"model must be a dict with 'kind' in {tuple(SPACE_OF_KIND)}, got {spec!r}")
    return SPACE_OF_KIND[kind]


def _json_form(value: Any, name: str) -> Any:
    """A free-form field (model, schedule, sampling) as config.json gives it back: tuples as lists, numpy numbers as
    Python's. A tuple in the model made a run that its own config.json could not resume ("differs in: model"), and
    a numpy int64 T trained the whole run before its export failed."""
    def plain(v):
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, numbers.Real):
            return float(v)
        if hasattr(v, "tolist"):  # a numpy array
            return v.tolist()
        raise TypeError(f"{type(v).__name__} is not JSON")

    try:
        return json.loads(json.dumps(value, default=plain))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must hold only JSON values (numbers, strings, lists, objects): {e}") from None


def check_run_args(steps: Any, max_seconds: Any) -> None:
    """Trainer.run's steps (an int >= 1, the total to reach, or None) and max_seconds (a number >= 0, or None /
    inf: no limit; 0 stops after one step)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
        raise ValueError(f"steps must be an int >= 1 (the total to reach), got {steps!r}")  # 2.5 trained 2
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, numbers.Real)
                                    or not 0 <= max_seconds):  # "60" failed after a step, nan never stopped
        raise ValueError(f"max_seconds must be a number >= 0, or None, got {max_seconds!r}")


def _from_dict(cls, d: dict, what: str):
    """``cls(**d)`` for the JSON object ``d`` of the section ``what`` ("config" for the top level, "data",
    "loss"): unknown keys and values of the wrong JSON type are refused, naming the key."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in {what}: {unknown_keys(unknown, names)}")
    hints = typing.get_type_hints(cls)
    given, d = d, {name: _python_numbers(value, hints[name]) for name, value in d.items()}  # numpy's too
    for name, value in d.items():
        if not json_type_ok(value, hints[name]):
            key = name if what == "config" else f"{what}.{name}"
            raise ValueError(f"{key} must be {json_type_name(hints[name])}, got {given[name]!r}")
    if what == "config":
        return cls(**d)
    try:  # a section's own checks (DataConfig: "scale must be >= 1") name the section
        return cls(**d)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def rate_jump(cfg: TrainConfig, then: dict, step: int) -> Optional[str]:
    """What a resume at ``step`` does to the learning rate, where cfg moves steps or decay_from (both may change)
    from ``then`` (the checkpoint's config dict): a message if the rate there moves by more than 1% (--decay-from
    below the step drops it at once), else None."""
    was = cfg.replace(steps=then.get("steps", cfg.steps), decay_from=then.get("decay_from", 0))
    now, before = cfg.learning_rate(step), was.learning_rate(step)
    if abs(now - before) <= 0.01 * before:
        return None
    return (f"the learning rate at step {step}, where the run resumes, is {now:.3g}; the run's config gave "
            f"{before:.3g} there (steps {was.steps}, decay_from {was.decay_from}; now steps {cfg.steps}, decay_from "
            f"{cfg.decay_from}): it jumps")
