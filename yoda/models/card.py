"""ModelCard: what yoda.sample must know about a network besides its weights (the class says what)."""

from __future__ import annotations

import collections.abc
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from yoda_kernels.contract import PREDICTIONS

from .._json_fields import unknown_keys
from ..adapters import SPACES
from ..masks import as_int, check_lower_bound, positive_int
from ..schedule import Schedule


class FrozenMapping(collections.abc.Mapping):
    """A read-only dict that pickles and deep-copies (types.MappingProxyType does neither: an adapter holding one
    could not be copy.deepcopy'd nor sent to a spawned DataLoader worker or a process pool)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping = ()):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __reversed__(self):
        return reversed(self._data)

    def __or__(self, other):  # a dict, as MappingProxyType's
        return self._data | dict(other) if isinstance(other, collections.abc.Mapping) else NotImplemented

    def __ror__(self, other):
        return dict(other) | self._data if isinstance(other, collections.abc.Mapping) else NotImplemented

    def copy(self) -> dict:
        return dict(self._data)

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"

    def __reduce__(self):
        return (type(self), (self._data,))


def check_sampling(s: Any, name: str, T: Optional[int] = None) -> dict:
    """``s`` as a dict {"sampler": a yoda.sample sampler, "steps": an int in [1, T], "lower_bound": a float >= 0}
    (any key may be left out), else ValueError naming ``name``: a bad sampler ("DDIM") or steps failed only at the
    model's first sample."""
    from ..sampling.spec import ALL_SAMPLERS

    known = {"sampler", "steps", "lower_bound"}
    if not isinstance(s, Mapping):
        raise ValueError(f"{name} must be None or a mapping with the keys 'sampler', 'steps' and / or "
                         f"'lower_bound', got {s!r}")
    if not set(s) <= known:
        raise ValueError(f"unknown key(s) in {name}: {unknown_keys(sorted(map(str, set(s) - known)), known)}")
    if s.get("sampler", "ddpm") not in ALL_SAMPLERS:
        raise ValueError(f"{name}: 'sampler' must be one of {', '.join(ALL_SAMPLERS)}, got {s['sampler']!r}")
    out = dict(s)
    if "steps" in out:  # numpy ints too, stored as ints (the card goes to JSON)
        try:
            steps = as_int(out["steps"], "steps")
        except (TypeError, ValueError):  # one ValueError for all: a card's sampling comes from files too
            steps = 0
        if not 1 <= steps <= (T or steps):
            raise ValueError(f"{name}: 'steps' must be an int in [1, {T or 'T'}] (the schedule's T), got "
                             f"{out['steps']!r}")
        out["steps"] = steps
    if "lower_bound" in out:
        out["lower_bound"] = check_lower_bound(out["lower_bound"], f"{name}['lower_bound']")
    return out


@dataclass(frozen=True)
class ModelCard:
    """What yoda.sample must know about a network besides its weights, in one explicit object.

        card = ModelCard(schedule=Schedule.linear(1000), scale=4, prediction="x0", space="pixel")
        net.card = card                  # yoda.load, the trainer and save_model set / read it
        adapter = net.yoda_adapter()     # SR3Adapter / SRDiffAdapter take schedule, scale and prediction from it

    schedule    the Schedule the model samples with (T, alpha_bar)
    scale       the SR factor (HR = scale * LR)
    prediction  what the network outputs: "eps", "x0" or "v" (yoda_kernels.contract.PREDICTIONS)
    space       where x_t lives: "pixel" (SR3) or "residual" (SRDiff) (yoda.adapters.SPACES)
    config      where the card came from, as JSON-like data: for a "yoda" model file its metadata config
                ({"kind", "args", "schedule", "scale", "prediction", "upsampling", and "sampling" / "extra" where
                given: yoda.models.yoda_format), for an upstream SR3 checkpoint
                {"kind", "args", "train_schedule"}; None when the card was made by hand
    sampling    yoda.sample's defaults for this model where a call leaves them out: {"sampler": name,
                "steps": n, "lower_bound": l} (any key may be absent; a model trained with YODA's masks records
                the l of its training masks). yoda.load gives the embedded model its own (DDIM, 1 step:
                an x0 regressor trained for one step, QUALITY.md); None: yoda.sample's (DDPM, every step of T)

    The card is frozen: to sample a model with another schedule, make a new card (dataclasses.replace) or pass
    the value to ``yoda_adapter(...)``, which takes precedence over the card (its sampling steps are then kept where
    they fit the schedule's T: adapter_sampling). Its repr is short: the schedule's T
    and first / last beta, and the config's kind and keys (a model file's config holds all T betas, ~23 kB at
    T = 1000).
    """

    schedule: Schedule
    scale: int
    prediction: str = "eps"
    space: str = "pixel"
    config: Optional[Mapping[str, Any]] = None
    sampling: Optional[Mapping[str, Any]] = None

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"ModelCard.schedule must be a yoda.Schedule, got {type(self.schedule).__name__}")
        object.__setattr__(self, "scale", positive_int(self.scale, "ModelCard.scale"))
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"ModelCard.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.space not in SPACES:
            raise ValueError(f"ModelCard.space must be one of {SPACES}, got {self.space!r}")
        if self.config is not None and not isinstance(self.config, Mapping):
            raise TypeError(f"ModelCard.config must be a mapping or None, got {type(self.config).__name__}")
        if self.sampling is not None:  # frozen, as the card is
            object.__setattr__(self, "sampling", FrozenMapping(check_sampling(self.sampling, "ModelCard.sampling",
                                                                                 self.schedule.T)))

    def __reduce__(self):
        """Pickled and copied (copy.deepcopy of a model, torch.save of a whole module) through its constructor, which
        checks the fields again and freezes ``sampling`` (a pickle holds it as a plain dict)."""
        sampling = None if self.sampling is None else dict(self.sampling)
        return (type(self), (self.schedule, self.scale, self.prediction, self.space, self.config, sampling))

    def __repr__(self) -> str:
        cfg = self.config
        if cfg is not None:  # kind and keys only: the full config repeats the schedule's betas
            kind = f"{cfg['kind']} " if isinstance(cfg.get("kind"), str) else ""
            keys = list(cfg)
            cfg = f"<{kind}config with keys {', '.join(map(str, keys[:8]))}{', ...' if len(keys) > 8 else ''}>"
        sampling = "" if self.sampling is None else f", sampling={dict(self.sampling)!r}"
        return (f"ModelCard(schedule={self.schedule!r}, scale={self.scale}, prediction={self.prediction!r}, "
                f"space={self.space!r}, config={cfg}{sampling})")


def adapter_sampling(card: Optional[ModelCard], T: int) -> Optional[Mapping[str, Any]]:
    """An SR3 / SRDiff adapter's sampling_defaults from its card (None: no card, or a card without sampling), for a
    schedule of T steps: the card's steps are left out where they exceed T (a schedule given to yoda_adapter in place
    of the card's: yoda.sample then takes its own default, every step of T; it said "steps must be in [1, T]" of
    steps the call never gave)."""
    if card is None or card.sampling is None:
        return None
    return FrozenMapping({k: v for k, v in card.sampling.items() if k != "steps" or v <= T})
