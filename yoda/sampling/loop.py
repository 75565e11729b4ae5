"""yoda.sample: the one sampler loop of YODA (DESIGN.md §5), for every model space and every sampler.

    spec = make_spec(adapter, lr, ...)         # validate: every argument checked, backend resolved once
    run = prepare(adapter, spec, lr, attention, noise)   # c, cond, A and its tile stats, noise, windows
    x = run.start()                            # x = where(A >= tau_1, z_0, sqrt(ab_1) c + sqrt(1 - ab_1) z_0)
    for i in range(steps):                     # step i: (idx, ab_t, ab_prev) = spec.pairs[i], tau = spec.taus[i]
        pred, calls = run.denoise(x, i)        # adapter.denoise(x, idx, ab_t, cond), whole state or windows
        x = run.step(x, pred, i)               # masked_step: the sampler update where A >= tau, LR elsewhere
        # or, for a sigma-space solver (yoda.sampling.solvers), in place of both lines: the model, then
        # masked_combine of x, D0 and the history
        x, hist, extra = run.solve(x, i, hist)
    sr = run.decode(x)

The loop is stateless apart from a solver's history (its last two denoised estimates): every step is a function
of (x, history, idx, the schedule, seed, step number). Noise is Philox(seed, step) with step 0 for the start and
i + 1 for loop step i (or entry 0 / i + 1 of ``noise``). With attention=None or lower_bound >= 1 the mask is
None (every pixel active) and the very same loop is the plain sampler.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm.auto import trange

from ..adapters import Adapter, apply_cfg_scale, as_adapter, model_lower_bound
from ..attention.classic import check_lr
from ..callables import model_name, modules_behind
from ..errors import NonFiniteError, UnrefinedWarning
from .prepare import pad_to_model, prepare, resolve_attention, state_floor
from .spec import MOST_YODA_STEPS, all_finite, covering_steps, make_spec, model_spacing, refines_all, resolve_seed
from .speed import check_speed, network_attr, speed_adapter

FINITE_EVERY = 10  # the state is checked for NaN/Inf after step 0, every this many steps, and at the end


def sample(
    model: Any,
    lr: torch.Tensor,
    *,
    attention: Any = None,
    steps: Optional[int] = None,
    sampler: Optional[str] = None,
    eta: Optional[float] = None,
    lower_bound: Optional[float] = None,
    seed: Optional[int] = None,
    noise: Optional[torch.Tensor | Sequence[torch.Tensor]] = None,
    backend: str = "auto",
    progress: Optional[bool] = None,
    callback: Optional[Callable[[dict], None]] = None,
    clip: Optional[bool] = None,
    kernel_tile: Optional[int] = None,
    spacing: Optional[str] = None,
    windows: Any = None,
    window_batch: Optional[int] = None,
    tile: Optional[int] = None,
    tiles: Any = None,
    compile: Any = False,
    autocast: Optional[str] = None,
    channels_last: bool = False,
    cuda_graphs: bool = False,
    cfg_scale: Optional[float] = None,
    sigmas: Any = None,
    timesteps: Optional[str] = None,
    pad: bool = False,
) -> torch.Tensor:
    """Super-resolve ``lr`` with YODA (DESIGN.md §5): returns SR (B, 3, s*h, s*w) in [-1, 1], dtype/device of lr
    (a float64 lr is sampled in float32, the fused kernels' widest state, and its SR cast back).

    model: an Adapter, an object with ``yoda_adapter()``, or a callable wrapped by yoda.adapters.as_adapter.
    lr: (B, 3, h, w) or (B, 1, h, w) in [-1, 1].
    attention: None (plain sampler), a tensor (B, 1, h', w') / (B, h', w') in [0, 1] at any resolution (resized
        bilinearly to HR, then to the state grid by the adapter; batch 1 is one map for every image), a name for
        yoda.attention.get (a "dino-...:PATH" name reads its weights at every call, and warns the second time: pass
        yoda.attention.get(name), made once, to sample many), or f(lr) -> A.
    steps: sampling steps (default: explicit noise='s entries - 1, except with spacing="ldm_uniform"; else the
        model's, adapter.sampling_defaults, e.g. 1 for the embedded model; else T; at most T, except a solver's
        karras / exponential / uniform sigmas: up to yoda.sampling.spec.MAX_SOLVER_STEPS; with attention the model's
        steps are raised to the fewest whose last step refines every pixel, down to the map's least attention (the
        batch's: the steps are shared; at most yoda.sampling.spec.MOST_YODA_STEPS; 2 for the embedded model at
        lower_bound 0.6, as the CLI takes them; a flat map, all ones, keeps the model's steps); heun, dpm_2, dpm_2_a
        and dpmpp_2s_a call the model twice per step but the last). ddpm / ddim visit the indices
        schedule.respace(steps, spacing) (spacing default: the model's, adapter.sampling_defaults["spacing"]
        (from_diffusers: the scheduler's timestep_spacing), else "trailing"; ddpm / ddim only).
    sampler: default: the model's (adapter.sampling_defaults: "ddim" for the embedded model), else "ddpm".
        "ddpm" (ancestral, fixed-small variance) or "ddim" with ``eta`` (default 0: deterministic); or a
        sigma-space solver of yoda.sampling.solvers, named as in k-diffusion / DiffBIR: "euler", "euler_a"
        (ancestral), "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_2", "dpm_2_a" (ancestral),
        "dpmpp_2s_a" (ancestral); eta scales the noise of the ancestral and SDE solvers (default 1, k-diffusion's;
        0: their ODE form). The state stays in VP form; the multistep
        solvers keep their earlier denoised estimates; a pixel that wakes up has none before (DESIGN.md §5b).
    sigmas: the solvers' noise levels (solvers only): "karras" (default, rho 7), "exponential" or "uniform"
        (uniform in t) between the model's sigma(T - 1) and sigma(0), sigma = sqrt((1 - ab) / ab); or a strictly
        decreasing sequence of sigmas (steps then defaults to its length); 0 is appended. The model gets the
        fractional timestep of each sigma (log-sigma interpolation, as k-diffusion's DiscreteSchedule) as a
        float32 t and ab_t = 1 / (1 + sigma**2); tau is that of the fractional t (DESIGN.md §5b). "diffbir": DiffBIR's
        EDM sampler's (the discrete sigmas at linspace(T - 1, 0, steps, endpoint=False), the first at ab = 1e-8).
        A zero-terminal-SNR schedule's sigma(T - 1) is taken at ab = 1e-8 (sigma ~ 1e4), as DiffBIR does, or one
        step further along the table's log-ab spacing where ab[T - 2] <= 1e-8 (yoda.sampling.solvers).
        None: the adapter's solver_sigmas, else "karras".
    timesteps: the model's t of a solver's sigma (solvers only): "interpolate" (the fractional t above, float32),
        "nearest" (the nearest discrete index in log sigma, int64, k-diffusion's quantize) or "visited" (the
        "nearest" index of the visited sigma nearest to it, as DiffBIR's EDM sampler; differs from "nearest" only
        at the two-call solvers' midpoints); None: the adapter's solver_timesteps, else "interpolate".
        DiffBIRAdapter defaults to sigmas="diffbir", timesteps="visited", so sampler="dpmpp_3m_sde", steps=10 is
        DiffBIR's default edm_dpm++_3m_sde sampler.
    lower_bound: l of tau = t / T - l; >= 1 makes every pixel active (the plain sampler, bit for bit); below 1 / T
        the last step's tau is above 0, so pixels with A = 0 (one in every min-max normalised map) are never
        refined, however many steps (the CLI notes it; the callback's active_fraction shows it). None: the
        model's (adapter.sampling_defaults["lower_bound"]: a model trained with YODA's masked input records the l
        of its training masks), else 0.6.
    seed: Philox seed (None: drawn from torch's default generator); the noise of image k of a batch depends on k
        (DESIGN §9), so an image sampled alone differs from the same image at position k > 0 of a batch (and,
        with the SD x4 upscaler, whose LR noise is the pipeline's, drawn for the batch, at position 0 too).
    noise: explicit noise, one entry per visited step + 1 (steps + 1, more with spacing="ldm_uniform"), of the state's shape (entry 0 for the start,
        i + 1 for loop step i), overriding the seed.
    pad: an lr whose HR size the model cannot take (not a multiple of its size multiple, a side too small) is a
        ValueError; pad=True edge-pads it at the bottom and right to the smallest size the model takes and crops
        the SR back to (s*h, s*w), the attention map made of lr itself and padded the same way (as `yoda upscale`
        does). Explicit noise= then has the padded state's shape.
    progress: a tqdm bar over the steps (cleared once done; none for one step) and, in windows, one over each
        step's denoiser calls; None (default): only when stderr is a terminal (not into a log file or a notebook's
        captured stream); True: always; False: none (tqdm's own TQDM_DISABLE=1 also turns them off).
    backend: of the fused ops ("auto", "naive", "cpp", "cuda", "triton"), resolved once for lr's device.
    clip: clip x0_hat to [-1, 1] (None: adapter.clip_x0).
    kernel_tile: the fused ops' kernel tile (8, 16, 32; default 16): how the kernels split the work, no effect
        on the result.
    callback(d): after each step, d = {i, t (0-based index), tau, x (new state), x0_hat, active_fraction (B,):
        of the state pixels that hold the image, a latent adapter's padding not counted), calls (windows denoised
        at this step; 1 untiled), batches (denoiser forward passes at this step)}; the
        solvers add sigma; t is then the solver's timestep (fractional with timesteps="interpolate"), and the
        two-call solvers' (heun, dpm_2, dpm_2_a, dpmpp_2s_a) calls / batches include their second model call.
        x and x0_hat are in the model's space (pixels for SR3, the residual (HR - up(lr)) * 2 for SRDiff and the
        embedded model, latents for a latent model), and inference tensors: clone them to keep or change them
        (an in-place op outside torch.inference_mode is an error; the callback runs outside it, under
        torch.no_grad()). To see x0_hat as an image, decode it as the loop does at the end: ad =
        yoda.adapters.as_adapter(model); cond = ad.prepare(lr).cond (once, under torch.inference_mode()), then
        ad.decode(d["x0_hat"], lr, cond) in the callback.
        With attention, the last step's active_fraction says how much was refined at all: with few steps the
        masks may not reach every pixel (at the last step t, pixels with A < t / T - lower_bound keep the LR
        image; yoda.sample takes enough where the steps are the model's own, and so does the CLI).
    windows: the denoiser windows, not the kernel tile: None, window, (window, overlap) or (window, overlap,
        skip_inactive=True), the window a side W or a (height, width) pair (windows=((H, W), O); O None: the
        default below): tiled denoising over the state grid with Gaussian blending (per axis, a quarter of that
        side); windows with no
        active pixel at a step skip their denoiser call (exact w.r.t. dense tiled sampling, i.e.
        skip_inactive=False). The adapter must implement crop_cond (and stack_conds, default: concatenation).
        A window alone overlaps by a quarter of its shorter side that tiles the image (a side that covers the
        image spans the state grid there, whatever its multiple), rounded down to the model's grid as
        `yoda upscale --tiles W` rounds it (yoda.sampling.tiles.default_overlap; a latent model: W // 4).
    window_batch: the active windows of a step go through the model in batches of this many (None: what fits
        yoda.sampling.tiles.WINDOW_BATCH_BYTES by a fixed activation estimate). Batching does not change the
        result for a model whose forward is batch-invariant (bit for bit); CPU convolutions (oneDNN) and matmuls
        round differently at different batch sizes, about 1e-7 in the model output (README, "Large images"):
        window_batch=1 gives the one-window-per-call image.
    compile (bool, or a dict of torch.compile kwargs), autocast ("bf16" | "fp16"), channels_last, cuda_graphs
        (CUDA only): speed options of the denoiser's network, not of the fused step (yoda.sampling.speed).
    tile, tiles: deprecated aliases of kernel_tile and windows (DeprecationWarning).
    cfg_scale: classifier-free guidance scale for an adapter with an unconditional branch (supports_cfg, e.g.
        yoda.models.diffbir.DiffBIRAdapter): sampled with adapter.with_cfg_scale(cfg_scale). None: the adapter
        as configured. Other adapters raise ValueError naming cfg_scale.

    A model output or state with NaN or Inf raises yoda.errors.NonFiniteError (a FloatingPointError) naming the
    step, its timestep index and the model; both are checked after step 0, every FINITE_EVERY steps and after
    the last step (two reductions every few steps), the decoded image once.
    """
    kernel_tile = _alias("kernel_tile", kernel_tile, "tile", tile, 16)
    windows = _alias("windows", windows, "tiles", tiles, None)
    adapter = apply_cfg_scale(as_adapter(model), cfg_scale)
    warn_if_training(adapter)
    if not isinstance(pad, bool):
        raise TypeError(f"pad must be a bool, got {type(pad).__name__}")
    defaults = adapter.sampling_defaults  # the model's (its ModelCard's), for what the call leaves out
    if sampler is None:
        sampler = defaults.get("sampler", "ddpm")
        if spacing is not None and sampler not in ("ddpm", "ddim"):  # (the error named a sampler the call did not)
            raise ValueError(f"spacing={spacing!r} is for sampler='ddpm' / 'ddim'; this model samples with "
                             f"{sampler!r} where the call names none (adapter.sampling_defaults): give sampler=")
    spacing = model_spacing(adapter, sampler, spacing)  # the model's own (a diffusers scheduler's)
    if lower_bound is None:  # the model's (a model trained with YODA's masked input: its masks' l), else 0.6
        lower_bound = model_lower_bound(adapter)
    own_steps = steps is None and (sigmas is None or isinstance(sigmas, str))  # a sequence of sigmas: its own count
    if own_steps:
        steps = defaults.get("steps")
        if noise is not None and spacing != "ldm_uniform":  # explicit noise gives the count (one entry a step + 1)
            n = len(noise) if isinstance(noise, (list, tuple)) else (
                noise.shape[0] if isinstance(noise, torch.Tensor) and noise.dim() else None)
            if n is not None and n < 2:  # it was said as "steps must be in [1, T], got -1"
                raise ValueError(f"noise must have at least 2 entries (the start, then one a step), got {n}")
            steps = steps if n is None else n - 1
    lr_checked = check_lr(lr, float32=False, stacklevel=3)
    crop = None
    given = attention  # (a map made below, padded or for the covering steps, is yoda's own: prepare takes it as is)
    if pad:
        lr_checked, attention, crop = pad_to_model(adapter, lr_checked, attention, lower_bound)
    draw = seed is None and noise is None  # explicit noise fixes the image: nothing is drawn for it
    seed = 0 if seed is None else resolve_seed(seed)  # None: drawn after prepare, once the arguments are known good

    def spec_of(n):
        return make_spec(adapter, lr_checked, steps=n, sampler=sampler, eta=eta, lower_bound=lower_bound, seed=seed,
                         backend=backend, progress=progress, callback=callback, clip=clip, kernel_tile=kernel_tile,
                         spacing=spacing, windows=windows, window_batch=window_batch, sigmas=sigmas,
                         timesteps=timesteps)

    def last_tau(n):  # the last step's threshold at n steps (covering_steps)
        return spec_of(n).taus[-1]

    spec = spec_of(steps)
    if own_steps and steps is not None and attention is not None and noise is None and spec.taus[-1] > 0:
        # the model's steps may leave pixels at the LR image beside refined ones: the fewest that refine them all,
        # down to the least attended pixel (a flat map, all ones, is refined everywhere at the model's own steps)
        attention = resolve_attention(attention, lr_checked, tuple(n * adapter.scale for n in lr_checked.shape[-2:]))
        enough = covering_steps(last_tau, steps, spec.T, state_floor(adapter, attention))
        if enough is None:  # (it kept the model's steps without a word)
            warnings.warn(f"attention: at the model's {steps} step(s) with lower_bound {lower_bound:g}, pixels whose "
                          f"attention is below {spec.taus[-1]:.2f} keep the LR image, and no step count up to "
                          f"{min(MOST_YODA_STEPS, spec.T)} refines every pixel: give steps= or a larger lower_bound",
                          UnrefinedWarning, stacklevel=2)
        spec = spec if enough in (None, steps) else spec_of(enough)
    said = own_steps and steps is not None and noise is None  # the model's steps: covered above, or said there
    speed = check_speed(compile=compile, autocast=autocast, channels_last=channels_last, cuda_graphs=cuda_graphs,
                        device=lr_checked.device)
    with torch.inference_mode():  # no autograd records, no version counters; the image returned is a normal tensor
        run = prepare(speed_adapter(adapter, speed), spec, lr_checked, attention, noise, image_size=crop,
                      fixed_batch=speed.cuda_graphs, resolved=attention is not given)
        attention = given = None  # (an HR map made here was held through the loop beside the run's copy)
        if draw:  # from torch's generator, so that torch.manual_seed(...) reproduces the image; one draw a call, made
            # once prepare's checks passed (a call refused there drew it, and changed the caller's next draws)
            spec = run.spec = dataclasses.replace(spec, seed=resolve_seed(None))
            run.ops.seed = spec.seed
        if not said and run.A is not None and spec.taus[-1] > 0:
            count = last_tau if noise is None and (sigmas is None or isinstance(sigmas, str)) else None
            warn_unrefined(spec, spec.steps if steps is None else steps, float(run.A.min()), count)
        x = run.start()
        last_ok = -1  # the last step after which the state was checked finite
        hist: tuple = ()  # a solver's earlier denoised estimates, newest first
        # without a bar, no tqdm at all (even disabled it starts its monitor thread and registers an atexit hook)
        # (and none for one step: a folder of images flashed a 0/1 bar under its own bar for each one)
        bar = spec.progress and spec.steps > 1
        for i in trange(spec.steps, desc="yoda.sample", leave=False) if bar else range(spec.steps):
            check = i == 0 or i % FINITE_EVERY == 0 or i == spec.steps - 1  # cheap: not every step
            if spec.solver is None:
                pred, calls = run.denoise(x, i)
                x_new, extra = run.step(x, pred, i), None
            else:  # a solver calls the model itself and lets go of its output early: pred is its finite_token
                x_new, hist, extra = run.solve(x, i, hist, check)
                pred, calls = extra["output"], extra["calls"]
            if spec.callback is not None:
                report = run.report(i, x, x_new, pred, calls, extra)
                with torch.inference_mode(False), torch.no_grad():  # an in-place op on its tensors is an error, as
                    spec.callback(report)  # documented (in inference mode it changed the image)
            x = x_new
            if check:
                if not all_finite(pred, x):  # one device sync for both; which one, only when one is not
                    name = _model_name(model, adapter)
                    _check_finite(pred, "the model output", i, last_ok, spec.pairs, name)
                    _check_finite(x, "the state", i, last_ok, spec.pairs, name)
                last_ok = i
            pred = extra = x_new = None  # only x (and a solver's history) is held through the next model call
        sr = run.decode(x)
        if not all_finite(sr):
            raise NonFiniteError(f"yoda.sample: {type(adapter).__name__}.decode returned NaN or Inf from a "
                                 f"finite final state (model {_model_name(model, adapter)})")
    if crop is not None:
        sr = sr[..., : crop[0], : crop[1]]
    return sr.clamp(-1.0, 1.0).to(lr.dtype)


def _alias(name: str, value: Any, old: str, old_value: Any, default: Any) -> Any:
    """The value of ``name``, taking the deprecated ``old`` name too (a DeprecationWarning; both: TypeError)."""
    if old_value is None:
        return default if value is None else value
    if value is not None:
        raise TypeError(f"give {name}= only ({old}= is its deprecated alias), not both")
    warnings.warn(f"yoda.sample: {old}= is deprecated, use {name}=", DeprecationWarning, stacklevel=3)
    return old_value


def _model_name(model: Any, adapter: Adapter) -> str:
    """``model`` as an error message names it: its class, and what the adapter wraps."""
    inner = model if model is not adapter else getattr(adapter, "net", getattr(adapter, "fn", None))
    if inner is None:
        return type(adapter).__name__
    name = getattr(inner, "__qualname__", None) or type(inner).__name__
    return f"{type(adapter).__name__} of {name}"


def _check_finite(x: torch.Tensor, what: str, i: int, last_ok: int, pairs: Sequence, model: str) -> None:
    """NonFiniteError naming the step(s) and the model if ``x`` has NaN or Inf (one reduction, one sync)."""
    if all_finite(x):
        return
    if i == last_ok + 1:
        where = f"at step {i} (t index {pairs[i][0]:g})"
    else:
        where = f"between steps {last_ok + 1} and {i} (t index {pairs[last_ok + 1][0]:g} to {pairs[i][0]:g})"
    raise NonFiniteError(f"yoda.sample: {what} has NaN or Inf {where} of {len(pairs)} steps: the model "
                         f"{model} returned non-finite values (check its weights, dtype and inputs)")


def warn_unrefined(spec: Any, steps: int, floor: float, last_tau: Optional[Callable[[int], float]]) -> None:
    """The caller's step count ``steps`` leaves pixels at the LR image (their attention, down to ``floor``, stays
    below the last step's threshold): said once, with the count that refines them all (last_tau(n): the last tau at
    n steps; None where the call fixes the count: explicit noise or sigmas). The words do not depend on the image,
    so that Python's default filter says it once for a folder sampled at one count; the CLI notes it itself."""
    if refines_all(spec.taus[-1], floor):
        return  # the last step reaches the least attended pixel
    enough = None if last_tau is None else covering_steps(last_tau, steps + 1, spec.T, floor)
    if enough:
        fix = f"steps={enough} refines every pixel"
    elif last_tau is not None:
        fix = "a larger lower_bound refines every pixel"
    else:  # the call fixes the count
        fix = "more steps or a larger lower_bound refine every pixel"
    warnings.warn(f"yoda.sample: at steps={steps} with lower_bound {spec.lower_bound:g}, pixels whose attention "
                  f"is below {spec.taus[-1]:.3g} keep the LR image (the last step's threshold); {fix}",
                  UnrefinedWarning, stacklevel=3)


# torch's layers that a training mode changes, by the class name a torch.jit.script'ed copy keeps (original_name)
_SCRIPTED_DROPOUTS = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")
_SCRIPTED_NORMS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")


def _training_layer(m: torch.nn.Module) -> Optional[str]:
    """The class name of ``m`` if it is in training mode and its output depends on it: a batch norm, or a dropout
    with p > 0; of a TorchScript module, scripted (it keeps its p, its momentum and its training flag; a traced
    one fixed its mode when it was traced: not looked at)."""
    if not m.training:
        return None
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or (
            isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0):
        return type(m).__name__
    name = getattr(m, "original_name", None) if isinstance(m, torch.jit.ScriptModule) else None
    if (name in _SCRIPTED_DROPOUTS and getattr(m, "p", 0) > 0) or (name in _SCRIPTED_NORMS
                                                                    and hasattr(m, "momentum")):
        return name
    return None


def warn_if_training(adapter: Any) -> None:
    """A network left in training mode samples with dropout on (the seed no longer fixes the image) and batch norm
    on the batch's statistics: said once per call, naming the layers and the fix, where it has such layers, in a
    torch.jit.script'ed network too (a network that uses dropout functionally, F.dropout(x, p, self.training), is
    not seen, nor a traced or exported graph)."""
    try:
        net = getattr(adapter, network_attr(adapter))
    except ValueError:  # an adapter that keeps no network where yoda looks
        return
    for net in modules_behind(net):  # the module, or those a callable runs (a lambda around the network)
        if not net.training:
            continue
        on = {name for name in map(_training_layer, net.modules()) if name}
        if on:  # (a module without either samples the same in both modes: said of it, the warning was noise)
            warnings.warn(f"the model ({model_name(net)}) is in training mode: its {', '.join(sorted(on))} "
                          f"layers change the image (dropout draws outside the seed, batch norm uses the batch's "
                          f"statistics); call model.eval() before yoda.sample", UserWarning, stacklevel=3)

