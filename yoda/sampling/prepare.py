"""Prepare a sampling run: the LR image in the model's space (c, cond), the attention map at the state grid and
its tile statistics, the explicit noise, the denoiser windows; then the three things a loop step does with
them (denoise, step or solve, report) and the start and the end (start, decode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F

import yoda_kernels as K

from .. import attention as _attention
from .. import masks
from ..adapters import Adapter, Prepared, checked_denoise, hr_grid, padded_lr_side
from ..attention.classic import minmax_normalize, warn_if_stretched
from ..errors import lr_from_images
from .spec import SamplingSpec, Windows, check_noise, finite_token, noise_entries
from .tiles import Tiler, default_overlap


class Run:
    """One prepared call of yoda.sample (see :func:`prepare`). Step i is spec.pairs[i]; its noise is Philox(seed,
    i + 1) or noise[i + 1], the start's Philox(seed, 0) or noise[0]."""

    def __init__(self, adapter: Adapter, spec: SamplingSpec, lr_state: torch.Tensor, c: torch.Tensor, cond: Any,
                 A: Optional[torch.Tensor], noise: Optional[list], tiler: Optional[Tiler], extent: tuple):
        self.adapter, self.spec, self.lr_state, self.c, self.cond = adapter, spec, lr_state, c, cond
        self.A, self.noise, self.tiler = A, noise, tiler
        # the fused ops, with c, A, its tile stats, tile, seed and backend checked once, not at every step
        self.ops = K.MaskedOps(c, A, tile=spec.kernel_tile, seed=spec.seed, backend=spec.backend)
        # what active_fraction counts: the image's part of the state grid, not its padding
        self.A_image = None if A is None else A[..., : extent[0], : extent[1]]
        # a multistep solver's history: as deep as its highest order reads (none for the one-step solvers)
        self.history = max(st.n for st in spec.solver) - 1 if spec.solver else 0

    def _noise(self, step: int) -> Optional[torch.Tensor]:
        """noise[step] in the state's dtype and on its device, converted when used: a list in another dtype or
        on another device is not copied whole (steps + 1 states) for the run."""
        if self.noise is None:
            return None
        return self.noise[step].to(device=self.c.device, dtype=self.c.dtype).contiguous()

    def _fused_step(self, x, pred, tau, step, coefs, clip):
        return self.ops.step(x, pred, tau, coefs=coefs, step=step, clip=clip, noise=self._noise(step))

    def start(self) -> torch.Tensor:
        """x at the first visited step (DESIGN §5): noise where active, the LR noised to ab there elsewhere."""
        _, ab, _ = self.spec.pairs[0]
        c = self.c
        return self._fused_step(c, c, self.spec.taus[0], 0, K.init_coefficients(ab), False)

    def denoise(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, int]:
        """(model output at step i in the state's dtype, denoiser calls made)."""
        idx, ab_t, _ = self.spec.pairs[i]
        return self._denoise(x, idx, ab_t, self.spec.taus[i])

    def _denoise(self, x: torch.Tensor, idx, ab_t: float, tau: float) -> tuple[torch.Tensor, int]:
        """The model at timestep ``idx``: t is (B,) int64 for an integer index (ddpm / ddim), float32 for the
        fractional timestep of a solver's sigma; ab_t is exact (1 / (1 + sigma**2) for a solver)."""
        if isinstance(idx, int):
            t = torch.full((x.shape[0],), idx, dtype=torch.int64, device=self.c.device)
        else:
            t = torch.full((x.shape[0],), idx, dtype=torch.float32, device=self.c.device)
        if self.tiler is not None:
            return self.tiler.denoise(self.adapter, x, t, ab_t, self.cond, tau)
        pred = checked_denoise(self.adapter, x, t, ab_t, self.cond)
        return (pred if pred.dtype == self.spec.state_dtype else pred.to(self.spec.state_dtype)), 1

    def step(self, x: torch.Tensor, pred: torch.Tensor, i: int) -> torch.Tensor:
        """x at step i + 1: the sampler update where active, the LR noised to ab_prev elsewhere (one fused op)."""
        s = self.spec
        _, ab_t, ab_prev = s.pairs[i]
        k = K.step_coefficients(ab_t, ab_prev, prediction=self.adapter.prediction, sampler=s.sampler, eta=s.eta)
        if i == s.steps - 1:  # the last step (ab_prev = ab[0] where the spacing ends there): the held pixels end
            k = k._replace(la=1.0, lb=0.0)  # at the LR image, not at it noised to ab[0] with a fresh draw
        # plain (A None): the op drops the LR branch, so a step with sigma == 0 (DDIM eta 0) draws no noise
        return self._fused_step(x, pred, s.taus[i], i + 1, k, s.clip)

    def solve(self, x: torch.Tensor, i: int, hist: tuple, check: bool = False) -> tuple[torch.Tensor, tuple, dict]:
        """Step i of a sigma-space solver (yoda.sampling.solvers), the model called here: (x at step i + 1, the new
        history, extras for the report: x0_hat, calls, batches, output). ``hist``: the denoised estimates of the
        earlier steps, newest first (_woken replaces those of pixels inactive at their step, DESIGN §5b); D0 = x0
        of the model output, clipped if spec.clip. The output is let go once D0 is made (one state less through
        the combine and a second model call, issue 12); extras' "output" is its finite_token (with the second
        call's) where ``check``, else None, for the loop's finiteness check. The two-call solvers (Heun, DPM-2,
        DPM++(2S)) call the model a second time, on their predictor (the LR at the predictor's sigma where
        inactive, the same noise)."""
        s = self.spec
        st = s.solver[i]
        tau, step = s.taus[i], i + 1
        pred, calls = self.denoise(x, i)
        extra = {"output": finite_token(pred) if check else None, "calls": calls, "batches": self._batches()}
        raw = x0_hat(x, pred, st.ab, self.adapter.prediction, s.clip)
        del pred
        d0 = in_state_dtype(raw, x.dtype)  # at pixels inactive now the combine takes the LR branch, never reads it
        extra["x0_hat"] = raw if s.callback is not None else None
        del raw  # a fp16 state's float32 x0 is not held through the combine unless the callback wants it
        if st.predictor is not None:  # the second estimate, at the predictor's sigma (st.t2, st.ab2)
            x2 = self._combine(x, [d0], st.predictor, tau, step)
            pred2, calls2 = self._denoise(x2, st.t2, st.ab2, tau)
            if check:  # the second output is checked too (an Inf one, clipped in x0, left the state finite)
                extra["output"] = torch.cat([extra["output"], finite_token(pred2)])
            d1 = in_state_dtype(x0_hat(x2, pred2, st.ab2, self.adapter.prediction, s.clip), x.dtype)
            del x2, pred2
            extra.update(calls=calls + calls2, batches=extra["batches"] + self._batches())
            return self._combine(x, [d0, d1], st.coefs, tau, step), (), extra
        x_new = self._combine(x, [d0, *self._woken(d0, hist[: st.n - 1], i)], st.coefs, tau, step)
        return x_new, (d0, *hist)[: self.history], extra

    def _woken(self, d0: torch.Tensor, hist: tuple, i: int) -> tuple:
        """The history for step i (``hist``: the entries the step uses): at a pixel that was inactive at an entry's
        step (the model's output there is whatever the tiled denoiser made of a window it may have skipped), that
        entry is replaced by the next newer one (D0 for the newest). A pixel that woke up since has no earlier
        estimate, so its update is of lower order, as a multistep solver's first steps are: first order at its
        first active step (DESIGN §5b). Extrapolating from c would take the jump from the LR's x0 to the model's
        for a slope.

        Without a callback the entries are replaced in place (no copies: two states less with dpmpp_3m_sde): an
        entry's pixels outside its own step's mask are never read again. Where the mask has grown since, every use
        goes through this replacement, which rewrites them; where it has not, the combine reads only pixels of that
        same mask. With a callback, the estimates it was shown as x0_hat are left as they were: a float32 state's
        (D0 is x0_hat itself); a float16 / bfloat16 state's history is its own cast, replaced in place still."""
        if self.A is None:
            return hist
        shown = self.spec.callback is not None and self.spec.state_dtype == torch.float32
        out, newer = [], d0
        for j, h in enumerate(hist):
            then = self.spec.taus[i - 1 - j]
            if then > self.spec.taus[i]:  # the mask grew since that step
                h = torch.where(masks.active(self.A, then), h, newer, out=None if shown else h)
            out.append(h)
            newer = h
        return tuple(out)

    def _batches(self) -> int:
        """Denoiser forward passes of the last denoise call."""
        return self.tiler.last_batches if self.tiler is not None else 1

    def _combine(self, x, denoised, coefs, tau: float, step: int) -> torch.Tensor:
        return self.ops.combine(x, denoised, tau, coefs=coefs, step=step, noise=self._noise(step))

    def report(self, i: int, x: torch.Tensor, x_new: torch.Tensor, pred: torch.Tensor, calls: int,
               extra: Optional[dict] = None) -> dict:
        """The callback's dict of step i: {i, t (0-based index), tau, x (new state), x0_hat, active_fraction (B,),
        calls (windows denoised, or 1 untiled), batches (denoiser forward passes)}; a solver adds sigma (t is
        then its timestep, and the two-call solvers' calls and batches count their second model call too)."""
        idx, ab_t, _ = self.spec.pairs[i]
        tau = self.spec.taus[i]
        batches = self._batches()
        if extra is not None:  # a solver's step: its passes, the second model call's included (calls: the loop's)
            batches = extra["batches"]
        out = {
            "i": i,
            "t": idx,
            "tau": tau,
            "x": x_new,
            "x0_hat": (x0_hat(x, pred, ab_t, self.adapter.prediction, self.spec.clip) if extra is None
                       else extra["x0_hat"]),
            "active_fraction": (masks.active_fraction(self.A_image, tau) if self.A is not None
                                else torch.ones(x.shape[0], device=self.c.device)),
            "calls": calls,
            "batches": batches,
        }
        if self.spec.solver is not None:
            out["sigma"] = self.spec.solver[i].sigma
        return out

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's image of the final state, checked: a floating (B, 3, s*h, s*w) tensor (a user's decode that
        gave a state-shaped or wrongly scaled tensor was returned as the image). The run's c and A are let go first:
        the loop is over, and decode's own images would otherwise be the call's peak (issue 12)."""
        self.c = self.ops = self.A = self.A_image = None
        sr = self.adapter.decode(x, self.lr_state, self.cond)
        lr = self.lr_state
        want = (lr.shape[0], 3, *(n * int(self.adapter.scale) for n in lr.shape[-2:]))
        if not isinstance(sr, torch.Tensor) or tuple(sr.shape) != want or not sr.is_floating_point():
            got = f"{sr.dtype} {tuple(sr.shape)}" if isinstance(sr, torch.Tensor) else type(sr).__name__
            raise ValueError(f"{type(self.adapter).__name__}.decode returned {got}, expected a floating RGB image "
                             f"{want} (B, 3, scale * h, scale * w of lr)")
        return sr


def prepare(adapter: Adapter, spec: SamplingSpec, lr: torch.Tensor, attention: Any, noise: Any,
            image_size: Optional[tuple] = None, fixed_batch: bool = False, resolved: bool = False) -> Run:
    """The Run of ``spec`` for the checked ``lr`` (B, 3, h, w): adapter.prepare on lr in the state's dtype, A from
    ``attention`` at HR resolved to the state grid (None when attention is None or lower_bound >= 1), the
    explicit ``noise`` checked against the state, the denoiser windows. image_size: the SR size of an lr that
    yoda.sample(pad=True) padded (the rest is padding). fixed_batch: Tiler's (cuda_graphs). resolved: attention is a
    map yoda.sample made at HR (padded, or for the covering steps), taken as it is. Call under
    torch.inference_mode() (or torch.no_grad())."""
    # the user's arguments first: adapter.prepare may be the heavy part (an RRDB, a VAE encode, DiffBIR's stage 1)
    w = spec.windows
    if w is not None and type(adapter).crop_cond is Adapter.crop_cond:
        raise ValueError(f"windows: {type(adapter).__name__} cannot denoise in windows (it has no crop_cond, which "
                         f"cuts its cond to a window); leave windows out")
    hr = (lr.shape[-2] * adapter.scale, lr.shape[-1] * adapter.scale)
    grid = adapter.state_grid(hr)
    extent = None if w is None or grid is None else adapter.state_extent(hr)
    if w is None and grid is not None:
        check_whole_sides(adapter, grid, grid, "sampling without windows")
    if extent is not None:  # before prepare where the state grid and the image's part are known without it
        if image_size is not None:
            extent = tuple(min(e, n) for e, n in zip(extent, image_extent(grid, image_size, hr)))
        w = check_window_size(adapter, w, grid, extent)
    A_hr = None
    if attention is not None and spec.masked:
        A_hr = attention if resolved else resolve_attention(attention, lr, hr)  # resolved: yoda.sample made it
    elif isinstance(attention, torch.Tensor):  # checked (NaN, range, shape) even when lower_bound >= 1 leaves it unused
        checked_map(attention, "attention", lr)
    elif isinstance(attention, str):  # a misspelt name is an error whatever the lower bound
        _attention.check_name(attention, file_exists=True)
    elif attention is not None and not callable(attention):
        raise TypeError(f"attention must be None, a tensor, a name or a callable, got {type(attention).__name__}")
    entries = noise_entries(noise, spec.steps + 1)
    lr_state = lr.to(spec.state_dtype)
    prep = adapter.prepare(lr_state)
    if not isinstance(prep, Prepared):  # (a tuple: "'tuple' object has no attribute 'c'")
        raise TypeError(f"{type(adapter).__name__}.prepare must return a yoda.adapters.Prepared(c=..., cond=...), "
                        f"got {type(prep).__name__}")
    c = prep.c
    if not isinstance(c, torch.Tensor) or c.dim() != 4 or not c.is_floating_point():
        raise TypeError(f"{type(adapter).__name__}.prepare must return c as a 4-D float tensor")
    c = c.to(spec.state_dtype).contiguous()
    B = c.shape[0]
    A = None
    if A_hr is not None:
        A = adapter.attention_to_state(A_hr, c.shape)
        if tuple(A.shape) != (B, 1, *c.shape[-2:]):
            raise ValueError(f"{type(adapter).__name__}.attention_to_state returned {tuple(A.shape)}, "
                             f"expected {(B, 1, *c.shape[-2:])}")
        A = A.float().contiguous()
    noise = check_noise(entries, c)
    extent = adapter.image_extent(prep.cond, c.shape)  # the image's part of the state grid, the rest padding
    if image_size is not None:  # and yoda.sample(pad=True)'s padding
        extent = tuple(min(e, n) for e, n in zip(extent, image_extent(c.shape[-2:], image_size, hr)))
    if w is not None:
        w = check_window_size(adapter, w, c.shape[-2:], extent, seams=True)
    elif grid is None:  # checked before prepare where the adapter tells its grid
        check_whole_sides(adapter, c.shape[-2:], c.shape[-2:], "sampling without windows")
    tiler = (Tiler(c.shape, w.size, w.overlap, w.skip_inactive, A, c.device, w.batch, adapter.activation_scale,
                   extent=extent, fixed_batch=fixed_batch, progress=spec.progress) if w is not None else None)
    return Run(adapter, spec, lr_state, c, prep.cond, A, noise, tiler, extent)


def check_window_size(adapter: Any, w: Windows, grid, extent=None, seams: bool = False) -> Windows:
    """``w`` with its overlap resolved (None, from windows=W: tiles.default_overlap of the shorter side among those
    that tile the image (a side that covers it spans the grid: a 16 x 128 window of a 16-high grid overlaps by 32,
    not 4), on hr_grid's unit for an HR-space model, as the CLI's --tiles W, since an SRDiff model's windows must lie
    on the LR grid and W // 4 need not; W // 4 for a latent model), and less than each side that tiles. A window
    narrower than the state grid goes through the model at its own size, so it must be a multiple of the model's
    size multiple on that grid (``latent_multiple`` of a latent adapter, else ``multiple``): a ValueError naming
    ``windows`` before any denoiser call, not the model's own error at the first step. It must also be at least the
    model's ``min_size`` (HR pixels: not for latents; the grid itself is, check_lr). extent: the image's part of the
    grid (yoda.sample(pad=True) pads it): a window that covers it along an axis covers the grid there (Tiler),
    whatever its size. seams: warn of windows that tile without overlapping (the last check of a call)."""
    latent = getattr(adapter, "latent_multiple", None)
    m = int(latent or getattr(adapter, "multiple", 1))
    typed = w.typed()  # as the call gave it
    # the sides narrower than the image go through the model at their size (Tiler: a wider one spans the grid)
    tiled = [n > s for s, n in zip(w.size, grid if extent is None else extent)]
    sides = [s for s, t in zip(w.size, tiled) if t]
    if w.overlap is None:  # as `yoda upscale --tiles W` (HR models); a latent window may start anywhere
        unit = 1 if latent else hr_grid(adapter)[0]
        w = dataclasses.replace(w, overlap=default_overlap(min(sides or w.size), unit))
    overlap, unit = w.overlap, int(getattr(adapter, "window_unit", 1))
    if sides and overlap >= min(sides):
        raise ValueError(f"windows: the overlap {overlap} must be less than the window's side {min(sides)}, along "
                         f"which it tiles the state grid {tuple(grid)}, got {typed}")
    check_whole_sides(adapter, [n for n, t in zip(grid, tiled) if not t], grid, typed)
    m = math.lcm(m, int(getattr(adapter, "denoiser_multiple", 1)))
    if any(s % m for s in sides):
        raise ValueError(f"windows: the window {next(s for s in sides if s % m)} must be a multiple of {m}, the "
                         f"model's size multiple on the state grid {tuple(grid)}, got {typed}")
    if any(s % unit or overlap % unit for s in sides):
        raise ValueError(f"windows: {type(adapter).__name__} windows must lie on the LR grid: window and overlap "
                         f"multiples of the scale {unit}, got {typed}")
    least = 1 if latent else int(getattr(adapter, "min_size", 1))
    if sides and min(sides) < least:  # (a side that covers an image smaller than that spans the padded grid)
        raise ValueError(f"windows: the window {min(sides)} must be at least {least} pixels, the smallest side this "
                         f"model takes, got {typed}")
    if seams and sides and overlap == 0:  # (yoda upscale --tiles W,0 notes it; from Python they came unsaid)
        warnings.warn(f"{typed}: windows that do not overlap leave seams where they meet (steps of several levels "
                      f"along their borders); an overlap blends them (windows=W alone overlaps by a quarter of W)",
                      UserWarning, stacklevel=4)
    return w


def check_whole_sides(adapter: Any, sides, grid, what: str) -> None:
    """A ValueError unless each of ``sides`` (of the state ``grid``, going through the denoiser whole) is a multiple
    of adapter.denoiser_multiple: DiffBIR's UNet fails on others with a bare size mismatch."""
    m = int(getattr(adapter, "denoiser_multiple", 1))
    bad = [n for n in sides if n % m]
    if bad:
        name = type(adapter).__name__
        raise ValueError(f"{'windows: ' if what.startswith('windows') else ''}{what} sends a whole side of {bad[0]} "
                         f"latents of the state grid {tuple(grid)} through {name}'s denoiser, which takes only "
                         f"multiples of {m} (denoiser_multiple): keep the adapter's latent_multiple a multiple of {m}, "
                         "or give windows narrower than the grid on that axis")


def image_extent(grid, image_size, hr) -> tuple:
    """The part of the state ``grid`` that holds an SR image of ``image_size`` padded to ``hr`` (yoda.sample(pad=True)),
    rounded up to whole grid cells."""
    return tuple(-(-g * n // p) for g, n, p in zip(grid, image_size, hr))


def in_state_dtype(x0: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float32 denoised estimate in the state's dtype, for the solvers' combine: a float16 state's estimate
    clamped to float16's largest finite value, not cast to Inf. At alpha_bar ~ 1e-8 (sigmas="diffbir") an
    unclipped x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) of a latent model can reach 1e5, finite in float32; as Inf it
    made the state NaN at step 0, and the error blamed the model. bfloat16 has float32's range."""
    if dtype == torch.float16:
        x0 = x0.clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max)
    return x0.to(dtype)


def x0_hat(x: torch.Tensor, pred: torch.Tensor, ab_t: float, prediction: str, clip: bool) -> torch.Tensor:
    """x0_hat = k1 x + k2 pred in float32, the kernels' own x0 coefficients and operation order (the callback's
    x0_hat; the solvers' denoised estimate D)."""
    k = K.step_coefficients(ab_t, 1.0, prediction=prediction)
    k1, k2 = (torch.tensor(v, dtype=torch.float32, device=x.device) for v in (k.k1, k.k2))
    x0 = x.float().mul(k1)  # the same operations as k1 * x + k2 * pred, with one temporary fewer
    x0.add_(pred.float().mul(k2))
    return x0.clamp_(-1.0, 1.0) if clip else x0


def checked_map(attention: torch.Tensor, src: str, lr: torch.Tensor, one_each: bool = False) -> torch.Tensor:
    """An attention tensor (B or 1, 1, h, w) or (B or 1, h, w) checked (shape, batch, float, finite, in [0, 1];
    errors name ``src``) and returned as float32 (B, 1, h, w) on lr's device. ``one_each``: a callable's map of lr,
    which must hold one map per image (a batch of 1 for a batch of B hid a callable that looked at lr[0] alone)."""
    B = lr.shape[0]
    A = attention.unsqueeze(1) if attention.dim() == 3 else attention
    if A.dim() != 4 or A.shape[1] != 1 or A.shape[2] == 0 or A.shape[3] == 0:
        raise ValueError(f"{src} must be (B, 1, h, w) or (B, h, w), not empty, got {tuple(attention.shape)}")
    if one_each and A.shape[0] != B:
        raise ValueError(f"{src} must return one map per lr image, batch size {B}, got {A.shape[0]} (shape "
                         f"{tuple(attention.shape)})")
    if A.shape[0] not in (1, B):
        raise ValueError(f"{src} must have batch size {B} (the lr batch){'' if B == 1 else ' or 1'}, got "
                         f"{A.shape[0]} (shape {tuple(attention.shape)})")
    if not A.is_floating_point():
        raise TypeError(f"{src} must be a float tensor in [0, 1], got {A.dtype}")
    if A.is_meta:
        raise ValueError(f"{src} is on the meta device: it holds no values")
    masks.check_dense(A, src)
    A = A.detach().to(device=lr.device, dtype=torch.float32)
    masks.check_unit_range(A, src)  # finite and in [0, 1]: one device sync
    return A.expand(B, 1, *A.shape[2:])


# The attention names with a weights file that resolve_attention has read in this process (to say so the second time)
_READ_BEFORE: set = set()


def state_floor(adapter: Adapter, A_hr: torch.Tensor) -> float:
    """The least attention the masks will compare (DESIGN.md §4), for choosing the steps before preparing: of the
    HR map ``A_hr`` brought to the state grid (a latent adapter's pooled cells, whose least value is higher) over the
    image's part of it, where the adapter tells the grid before preparing and its attention_to_state is yoda's own
    (which needs the shape alone; one of a user's may read what its prepare keeps); else of the HR map, never
    higher. A latent model whose one step already refined every latent was given two."""
    hr = tuple(A_hr.shape[-2:])
    grid = adapter.state_grid(hr)
    ours = getattr(type(adapter).attention_to_state, "__module__", "").startswith("yoda.")
    if grid is None or tuple(grid) == hr or not ours:
        return float(A_hr.min())
    A = adapter.attention_to_state(A_hr, torch.Size((*A_hr.shape[:2], *grid)))
    extent = adapter.state_extent(hr) or tuple(grid)
    return float(A[..., :extent[0], :extent[1]].min())


def resolve_attention(attention: Any, lr: torch.Tensor, hr_size: tuple[int, int]) -> torch.Tensor:
    """attention (tensor, name or callable f(lr)) -> A (B, 1, H, W) float32 in [0, 1] on lr's device."""
    src = "attention"
    # yoda's own extractors (a name, or what yoda.attention.get returns) are min-max normalised again after the
    # resize (DESIGN §3); a tensor or a user's callable is taken as it is (resized, clamped): its values may mean
    # something (a calibrated saliency, a constant)
    extracted = isinstance(attention, str) or getattr(attention, "minmax_after_resize", False)
    name = attention if isinstance(attention, str) else None
    if name is not None:
        attention = _attention.get(name)
        if name.partition(":")[2]:  # "NAME:PATH": a network's weights, read again at every call
            if name in _READ_BEFORE:
                warnings.warn(f"attention {name!r} reads its weights file at every yoda.sample call; make the "
                              f"extractor once, ex = yoda.attention.get({name!r}), and pass attention=ex",
                              stacklevel=4)
            _READ_BEFORE.add(name)
    if not isinstance(attention, torch.Tensor):
        if not callable(attention):
            raise TypeError(f"attention must be None, a tensor, a name or a callable f(lr) -> A; "
                            f"got {type(attention).__name__}")
        # outside yoda.sample's inference mode, under no_grad: a callable that needs gradients (Grad-CAM) can
        # turn them on with torch.enable_grad(), which inference mode would ignore ("does not require grad")
        # yoda's own extractor is given lr itself, of which yoda.sample's check_lr has said whether it looks like a
        # [0, 1] image: its own check is quiet (it said it again); a user's callable may make another image of lr
        # (yoda's extractors compute in float32 whatever autocast the caller set: attention.classic.float32_maps)
        quiet = lr_from_images() if extracted else contextlib.nullcontext()
        with torch.inference_mode(False), torch.no_grad(), quiet:  # a copy: a callable changing its input in
            attention = attention(lr.clone())  # place changed the LR image sampled (its SR, by up to 1.3)
        src = f"attention {name!r}" if name else "attention(lr)"  # a name's weights, not "attention(lr)"
        if not isinstance(attention, torch.Tensor):
            raise TypeError(f"{src} must return a tensor (B, 1, h, w), got {type(attention).__name__}")
    A = checked_map(attention, src, lr, one_each=src != "attention")
    if not extracted:
        warn_if_stretched(src, tuple(A.shape[2:]), hr_size, stacklevel=4)
    if tuple(A.shape[2:]) == hr_size:
        return A.clamp(0.0, 1.0).contiguous()
    A = F.interpolate(A, size=hr_size, mode="bilinear", align_corners=False)
    if extracted:  # DESIGN §3: resize, then min-max per image (upsampling pulls the peak below 1)
        A = minmax_normalize(A)
    return A.clamp_(0.0, 1.0)  # the resize's own map, contiguous: in place (no third HR-sized map at the peak)


def pad_to_model(adapter: Adapter, lr: torch.Tensor, attention: Any, lower_bound: float):
    """yoda.sample(pad=True): (lr edge-padded at the bottom and right to the smallest size ``adapter`` takes (its
    multiple and smallest side, adapters.hr_grid), the attention for it, the SR size (s*h, s*w) to crop back to).
    The map is made of lr itself at (s*h, s*w), the map yoda.sample makes of an lr the model takes, and then
    edge-padded as lr is: the padding must not move a Gaussian's centre or an edge map's range."""
    lower_bound = masks.check_lower_bound(lower_bound)
    s = adapter.scale
    h, w = lr.shape[-2:]
    ph, pw = (padded_lr_side(n, s, *hr_grid(adapter)) - n for n in (h, w))
    if not (ph or pw):
        return lr, attention, (s * h, s * w)
    if attention is not None and lower_bound < 1:  # (lower_bound >= 1: no map is used)
        A = resolve_attention(attention, lr, (s * h, s * w))
        attention = F.pad(A, (0, s * pw, 0, s * ph), mode="replicate")
    return F.pad(lr, (0, pw, 0, ph), mode="replicate"), attention, (s * h, s * w)
