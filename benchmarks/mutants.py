"""Mutation check: plant small, plausible one-line bugs, one at a time, in a temporary copy of the repository and
check that the tests named for each one catch it.

    .venv/bin/python benchmarks/mutants.py                      # every mutant (about 3-5 min on 2 cores)
    .venv/bin/python benchmarks/mutants.py --list               # the list, with the tests each must fail
    .venv/bin/python benchmarks/mutants.py window-axes noise-h4 # some of them
    .venv/bin/python benchmarks/mutants.py --no-baseline        # skip the unmutated runs of each selection

Not part of the default test run (it runs pytest ~40 times). Each mutant is (name, file, old, new, pytest
arguments, why): ``old`` must occur exactly once in the file, so a refactoring that moves the code makes the
script fail loudly instead of testing nothing -- then update the snippet. The copy holds the files git knows
(tracked and untracked-but-not-ignored, as they are in the working tree) plus the built extension
(yoda_kernels/_C*.so); the mutants are all in Python, so nothing is rebuilt. First every distinct test selection
runs unmutated (it must pass, or "caught" would mean nothing); then each mutant is planted, its selection runs
with ``-x``, and the file is restored. A mutant is caught when pytest fails (exit code 1, or 2 for an error at
collection); exit code 5 (no test selected) or 4 (usage) is an error in the list. The script exits 0 only if
every mutant is caught.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple  # pytest arguments (paths, -k expressions)
    why: str


MUTANTS = [
    # ---- the holes of issue 15 -----------------------------------------------------------------------------
    Mutant("window-axes", "yoda/sampling/tiles.py",
           "A[..., ys, xs].amax() for ys, xs in spans", "A[..., xs, ys].amax() for ys, xs in spans",
           ("tests/test_sampler.py", "-k", "tiled"),
           "window maximum over swapped axes: wrong windows skipped on a non-square image"),
    Mutant("window-batch-split", "yoda/sampling/tiles.py",
           "out[j * B:(j + 1) * B]", "out[:B]",
           ("tests/test_sampler.py", "-k", "window_batches"),
           "a batch of windows blends the first window's output everywhere"),
    Mutant("noise-h4", "yoda_kernels/philox.py",
           "    H4 = (H + 3) // 4\n", "    H4 = H // 4 + 1\n",
           ("tests/test_noise.py",),
           "row-group count of the counter map: right only when H % 4 != 0"),
    Mutant("reference-mask-gt", "yoda_kernels/naive.py",
           "return A >= _f32(tau).to(A.device)", "return A > _f32(tau).to(A.device)",
           ("tests/test_masked_step.py", "-k", "matches_reference and triton"),
           "the reference's mask drops A == tau: must fail on its own error, not loosen the Triton bound"),
    Mutant("triton-mask-gt", "yoda_kernels/triton/masked_step.py",
           "(mixed[None, :] & (a >= tau))", "(mixed[None, :] & (a > tau))",
           ("tests/test_masked_step.py", "-k", "matches_reference and triton"),
           "Triton's per-pixel mask in mixed tiles drops A == tau (planted ties)"),
    Mutant("mask-at-gt", "yoda/masks.py",
           "return A.float() >= torch.tensor(tau, dtype=torch.float32, device=A.device)",
           "return A.float() > torch.tensor(tau, dtype=torch.float32, device=A.device)",
           ("tests/test_masks.py",),
           "yoda.masks.mask_at drops A == tau"),
    Mutant("ddim-sigma", "yoda_kernels/coefs.py",
           "ceps = math.sqrt(max(1.0 - ap - sigma * sigma, 0.0))", "ceps = math.sqrt(max(1.0 - ap, 0.0))",
           ("tests/test_masked_step.py", "-k", "tau_le_0"),
           "DDIM direction term without the sigma^2 of eq. 12"),
    Mutant("lr-branch-ab-prev", "yoda_kernels/coefs.py",
           "la=math.sqrt(ap), lb=math.sqrt(1.0 - ap))", "la=math.sqrt(a), lb=math.sqrt(1.0 - a))",
           ("tests/test_masked_step.py", "-k", "tau_above_1"),
           "LR branch noised to t instead of t_prev"),
    Mutant("sr3-key-prefix", "yoda/models/sr3_load.py",
           'k[len("denoise_fn."):] if k.startswith("denoise_fn.")',
           'k[len("denoise_fn"):] if k.startswith("denoise_fn.")',
           ("tests/test_models.py", "-k", "sr3_upstream_checkpoint"),
           "upstream *_gen.pth keys keep a leading '.'"),
    Mutant("sr3-strict", "yoda/models/sr3_load.py",
           '    net = build_checked(lambda: SR3UNet.from_config(cfg), sd, p, hint="For SR3 pass the JSON the model was "\n'
           '                        "trained with (yoda.load\'s config=, the CLI\'s --model-config; default: the 16->128 '
           'config).")\n',
           "    net = SR3UNet.from_config(cfg)\n    net.load_state_dict(sd, strict=False)\n",
           ("tests/test_checkpoint.py",),
           "SR3 weights loaded non-strictly: missing / unexpected keys pass silently"),
    Mutant("dino-strict", "yoda/attention/dino.py",
           'return build_checked(build, sd, where=f"weights {path!r}", hint=f"Expected {fmt}.")',
           "m = build(); m.load_state_dict(sd, strict=False); return m",
           ("tests/test_dino.py", "tests/test_checkpoint.py", "-k", "dino"),
           "DINO weights loaded non-strictly"),
    # ---- tests that checked themselves, shapes or ranges (now values) ------------------------------------------
    Mutant("naive-noise-step", "yoda_kernels/naive.py",
           "return philox.noise(seed, step, x.shape, device=x.device)",
           "return philox.noise(seed, step + 1, x.shape, device=x.device)",
           ("tests/test_sampler.py", "-k", "same_seed and naive"),
           "the reference draws the next step's noise (its same-seed test compared it with itself)"),
    Mutant("dino-pos-embed-key", "yoda/attention/dino.py",
           'pe = sd.get("pos_embed")', 'pe = sd["pos_embed"]',
           ("tests/test_checkpoint.py", "-k", "dino_kinds"),
           "a file without DINO keys gives a KeyError, not the list of missing keys (the test accepted any "
           "exception)"),
    Mutant("pad-map-of-the-padded-lr", "yoda/sampling/prepare.py",
           "A = resolve_attention(attention, lr, (s * h, s * w))",
           "A = resolve_attention(attention, F.pad(lr, (0, pw, 0, ph), mode='replicate'), "
           "(s * (h + ph), s * (w + pw)))[..., : s * h, : s * w]",
           ("tests/test_sampler.py", "-k", "pad_samples"),
           "yoda.sample(pad=True) makes the map of the padded LR (a Gaussian's centre moved onto the padding), "
           "not of the LR itself as `yoda attention` draws it"),
    Mutant("train-val-lower-bound", "yoda/training/trainer.py",
           "lower_bound=self.cfg.loss.lower_bound, seed=self.cfg.seed, progress=False)",
           "lower_bound=1.0, seed=self.cfg.seed, progress=False)",
           ("tests/test_cli.py", "-k", "train_and_plot"),
           "validation 'YODA' PSNR is the plain sampler's (the test accepted any PSNR in (3, 60))"),
    Mutant("figure-panel-size", "yoda/attention/figure.py",
           "size = _panel_size(*a.shape[-2:], lr_hw=tuple(x.shape[-2:]))",
           "size = _panel_size(*x.shape[-2:], lr_hw=tuple(x.shape[-2:]))",
           ("tests/test_attention.py", "-k", "hr_attention_and_grey"),
           "figure panels sized from the LR instead of A (the test checked the mode and a height)"),
    Mutant("minmax-rtol", "yoda/attention/classic.py",
           "def minmax_normalize(m: torch.Tensor, rtol: float = 1e-6)",
           "def minmax_normalize(m: torch.Tensor, rtol: float = 1e-2)",
           ("tests/test_dino.py", "-k", "constant_image"),
           "a real but flat map (the constant image's DINO map spans 0.5 %) is flattened to all ones"),
    Mutant("evaluate-lower-bound", "yoda/evaluate.py",
           "run_sample(adapter, lr, extractors.get(attn), 1.0 if lb is None else lb,",
           "run_sample(adapter, lr, extractors.get(attn), 1.0,",
           ("tests/test_evaluate.py", "-k", "rows_and_table"),
           "the 'yoda' rows of yoda eval are plain samples (the test checked labels and call counts)"),
    Mutant("callback-x0-prediction", "yoda/sampling/prepare.py",
           '"x0_hat": (x0_hat(x, pred, ab_t, self.adapter.prediction, self.spec.clip) if extra is None',
           '"x0_hat": (x0_hat(x, pred, ab_t, "eps", self.spec.clip) if extra is None',
           ("tests/test_sampler.py", "-k", "callback"),
           "the callback's x0_hat assumes an eps model (the test compared x0_hat with the last state only)"),
    # ---- issue 14 (solvers, masked_combine, guidance) and the learning-rate decay ------------------------------
    Mutant("solver-history-not-woken", "yoda/sampling/prepare.py",
           "h = torch.where(masks.active(self.A, then), h, newer)", "pass",
           ("tests/test_solvers.py", "-k", "woken"),
           "a pixel that wakes up extrapolates from its estimates held at c (DESIGN §5b)"),
    Mutant("combine-cd2-sign", "yoda_kernels/naive.py",
           "sr = sr + k.cd2 * d2.float()", "sr = sr - k.cd2 * d2.float()",
           ("tests/test_masked_combine.py", "-k", "reference"),
           "the reference's third estimate enters with the wrong sign"),
    # ---- issue 13 (noise stream version 2) and the two-call solvers --------------------------------------------
    Mutant("normal-half-circle-bit", "yoda_kernels/philox.py",
           "c = torch.where((wb & 0x80000000) != 0, -c, c)", "c = torch.where((wb & 0x40000000) != 0, -c, c)",
           ("tests/test_noise.py", "-k", "bit_exact"),
           "the reference flips the cosine on bit 30, which also feeds the angle (the kernels use bit 31)"),
    Mutant("fma32-no-round-to-odd", "yoda_kernels/philox.py",
           "s = torch.where((err != 0) & ((bits & 1) == 0), bits + step, bits).view(torch.float64)",
           "s = bits.view(torch.float64)",
           ("tests/test_noise.py", "-k", "fma32"),
           "the reference's fma rounds twice (float64, then float32)"),
    Mutant("dpm2-predictor-at-sigma-next", "yoda/sampling/solvers.py",
           "sm = math.sqrt(s * to)", "sm = to",
           ("tests/test_solvers.py", "-k", "kdiffusion"),
           "DPM-2 takes its second model call at sigma' instead of the log-midpoint"),
    Mutant("cfg-swapped", "yoda/adapters.py",
           "    out = out_uncond + scale * (out_cond - out_uncond)\n", "    out = out_cond + scale * (out_uncond - out_cond)\n",
           ("tests/test_diffbir.py",),
           "classifier-free guidance with cond and uncond swapped"),
    Mutant("lr-decay-end", "yoda/training/trainer.py",
           "max(cfg.steps - step, 0) / max(cfg.steps - cfg.decay_from, 1)",
           "max(cfg.steps - step + 1, 0) / max(cfg.steps - cfg.decay_from, 1)",
           ("tests/test_train.py", "-k", "learning_rate"),
           "the learning-rate decay ends one step late (lr > 0 at the last step)"),
    Mutant("all-finite-no-fallback", "yoda/sampling/spec.py",
           "    return all(bool(torch.isfinite(x).all()) for x in xs)\n", "    return False\n",
           ("tests/test_sampler.py", "-k", "all_finite"),
           "the cheap NaN/Inf check trusts the sum: finite values whose sum overflows count as non-finite"),
    Mutant("lossy-quality", "yoda/images.py",
           'options = {"quality": LOSSY_QUALITY} if fmt in ("JPEG", "WEBP") else {}', "options = {}",
           ("tests/test_images.py", "-k", "lossy"),
           "JPEG / WebP written at Pillow's default quality 75 (several dB below 95)"),
    Mutant("env-limit-ignored", "yoda/images.py",
           'if "MAX_PIXELS" in globals() else _env_max_pixels()',
           'if "MAX_PIXELS" in globals() else DEFAULT_MAX_PIXELS',
           ("tests/test_images.py", "-k", "env_limit"),
           "read_image ignores YODA_MAX_PIXELS (read only where the CLI reads yoda.images.MAX_PIXELS)"),
    Mutant("no-checkpoint-head", "yoda/checkpoint.py",
           "if not head.startswith(_TORCH_HEADS):", "if not head:",
           ("tests/test_checkpoint.py", "-k", "no_checkpoint"),
           "a PNG given as a checkpoint gets torch's pickle refusal, naming classes it does not hold"),
    Mutant("resume-dropout-rng", "yoda/training/trainer.py",
           'self.rng.set_states(st.get("torch_rng"), st.get("cuda_rng"))', "pass",
           ("tests/test_train.py", "-k", "resume_equals"),
           "a resumed run with dropout draws the dropout masks of step 1 again"),
    Mutant("train-masks-unnormalised", "yoda/training/glue.py",
           "A = resolve_attention(extractor, make_lr(hr[..., :h, :w], scale), (h, w))",
           "A = resolve_attention(extractor(make_lr(hr[..., :h, :w], scale)), make_lr(hr[..., :h, :w], scale), (h, w))",
           ("tests/test_train.py", "-k", "training_masks"),
           "the trainer's YODA masks are not the sampler's (no min-max after the resize)"),
    Mutant("train-masks-misaligned", "yoda/training/trainer.py",
           "A = A[share].to(self.device)", "A = A[share].flip(-1).to(self.device)",
           ("tests/test_train.py", "-k", "whole_images_maps"),
           "the trainer's masks are not the crops of its HR crops' maps"),
    Mutant("srdiff-min-size", "yoda/models/srdiff.py",
           "self.min_size = 2 * model.multiple", "self.min_size = model.multiple",
           ("tests/test_cli.py", "-k", "tiny_inputs"),
           "an 8 px HR side reaches SRDiff's bottleneck reflection pad and crashes with a traceback"),
    Mutant("fit-line-unclipped", "yoda/drawing.py",
           "if len(cur) > 1:\n        runs.append(cur)\n    return runs", "return [list(points)]",
           ("tests/test_figures.py", "-k", "clipped"),
           "Fig. 5's fit line runs below the frame through the tick labels"),
    Mutant("sr3-torch-bicubic", "yoda/models/sr3_load.py",
           'net.upsampling = "sr3"', 'net.upsampling = "torch"',
           ("tests/test_upsampling.py", "-k", "released"),
           "a released SR3 checkpoint is conditioned on torch's bicubic, not the Pillow bicubic it was trained on"),
    Mutant("psnr-mean-per-method", "yoda/evaluate.py",
           'kept = [r["psnr"] for r in rs if r["image"] not in exact]',
           'kept = [r["psnr"] for r in rs if math.isfinite(r["psnr"])]',
           ("tests/test_evaluate.py", "-k", "exact_image"),
           "yoda eval's methods average their PSNR over different images when one reproduces an image exactly"),
    Mutant("srdiff-guessed-betas", "yoda/models/srdiff_load.py",
           "if betas_match(bufs, sched) is False:", "if False:",
           ("tests/test_checkpoint.py", "-k", "other_schedules or betas_whatever"),
           "an SRDiff checkpoint with a non-default beta_end / beta_s samples with the guessed cosine schedule"),
    Mutant("ancestral-sigma-down-0", "yoda/sampling/solvers.py",
           "        if to == 0.0:", "        if False:",
           ("tests/test_solvers.py", "-k", "1.5"),
           "dpm_2_a / dpmpp_2s_a with eta > 1 divide by sigma_mid = 0"),
    Mutant("icc-ignored", "yoda/images.py",
           "arr = _samples(_to_srgb(_upright(im), p), p)", "arr = _samples(_upright(im), p)",
           ("tests/test_images.py", "-k", "icc"),
           "a Display P3 / Adobe RGB photo is read as sRGB: shifted colours"),
    Mutant("eval-reads-all-first", "yoda/cli_models.py",
           "ImageStream(folder_images(folder), max_pixels)",
           "list(ImageStream(folder_images(folder), max_pixels))",
           ("tests/test_cli.py", "-k", "one_image_at_a_time"),
           "yoda eval holds every decoded image of the folder before sampling the first"),
    # ---- the eleventh session's mutation pass over the less covered modules (each survived before) -----------
    Mutant("diffusers-sample-as-v", "yoda/models/latent.py",
           '"sample": "x0"}', '"sample": "v"}',
           ("tests/test_models.py", "-k", "sample_prediction_is_x0"),
           "every diffusers x0-prediction model is sampled as a v-prediction model"),
    Mutant("loss-empty-mask-nan", "yoda/training/loss.py",
           "denom = count.clamp_min(1.0) if", "denom = count if",
           ("tests/test_train.py", "-k", "without_active_pixels"),
           "a batch with no active pixel gives a NaN loss, and its NaN gradients ruin the weights"),
    Mutant("sift-diameter-as-sigma", "yoda/attention/classic.py",
           "kp.size / 2.0 / math.sqrt(fx * fy)", "kp.size / math.sqrt(fx * fy)",
           ("tests/test_attention.py", "-k", "keypoint_scale"),
           "SIFT keypoints are splatted twice as wide as the blobs they found"),
    Mutant("half-lr-float32-state", "yoda/sampling/spec.py",
           "state_dtype=lr.dtype if lr.dtype in STATE_DTYPES else torch.float32",
           "state_dtype=torch.float32",
           ("tests/test_sampler.py", "-k", "half_precision_lr_keeps"),
           "an fp16 / bf16 lr samples a float32 state: twice the memory on a large image"),
    Mutant("eval-y-channel-ignored", "yoda/evaluate.py",
           "metrics(sr_u8, hr_u8, scale if settings.y_channel else None)", "metrics(sr_u8, hr_u8, None)",
           ("tests/test_evaluate.py", "-k", "y_channel_rows"),
           "yoda eval --y-channel prints RGB PSNR under the PSNR-Y header"),
    Mutant("vs-plain-population-sd", "yoda/evaluate.py",
           "np.std(diffs, ddof=1)", "np.std(diffs)",
           ("tests/test_evaluate.py", "-k", "vs_plain"),
           "the interval uses the population sd: too narrow, a difference looks shown that is not"),
    Mutant("claim-ignored", "yoda/_io.py",
           "return -1 if locked is False else None", "return None",
           ("tests/test_cli.py", "-k", "claim"),
           "two upscales with --skip-existing both make every image again"),
    Mutant("claim-on-a-deleted-file", "yoda/_io.py",
           "        if same:\n            return fd\n", "        if True:\n            return fd\n",
           ("tests/test_cli.py", "-k", "handed_over"),
           "a lock taken on a claim file its holder just unlinked counts as a claim: two processes make one image"),
    Mutant("busy-output-dropped", "yoda/cli_upscale.py",
           "        busy.append(item)\n", "",
           ("tests/test_cli.py", "-k", "skip_existing_waits"),
           "an output another --skip-existing run was making is never looked at again: left unmade when it fails"),
    Mutant("eval-overwrites-an-input", "yoda/cli.py",
           "    refuse_overwriting(outputs, [a.images,", "    (outputs, [a.images,",
           ("tests/test_cli.py", "-k", "refuses_an_input"),
           "yoda eval -o writes its table over an image of --images or the model file"),
    Mutant("log-half-row", "yoda/_io.py",
           "            os.ftruncate(fd, end)\n", "",
           ("tests/test_train.py", "-k", "half_row"),
           "a full disk leaves log.csv ending in part of a row"),
    Mutant("init-ema-random", "yoda/training/trainer.py",
           "        self.ema.load_state_dict(self.model.state_dict())\n        self.init_sha256",
           "        self.init_sha256",
           ("tests/test_train.py", "-k", "init_fine_tunes"),
           "fine-tuning keeps a random EMA: the exported weights average the init away from a random net"),
    Mutant("latent-window-batch-unscaled", "yoda/sampling/tiles.py",
           " * ACTIVATION_BYTES_PER_ELEMENT * max(1, activation_scale)", " * ACTIVATION_BYTES_PER_ELEMENT",
           ("tests/test_sampler.py", "-k", "activation_scale"),
           "a latent model's default window batch is a pixel UNet's: 64 SD-sized windows in one call"),
    Mutant("active-fraction-counts-padding", "yoda/sampling/prepare.py",
           "masks.active_fraction(self.A_image, tau)", "masks.active_fraction(self.A, tau)",
           ("tests/test_diffbir.py", "-k", "holds_inactive"),
           "the callback's active_fraction counts a latent adapter's padding (with the border's attention)"),
    Mutant("card-sampling-ignored", "yoda/sampling/loop.py",
           'sampler = defaults.get("sampler", "ddpm")', 'sampler = "ddpm"',
           ("tests/test_checkpoint.py", "-k", "sampling_defaults"),
           "yoda.sample(net, lr) of the embedded model runs DDPM instead of its own DDIM step"),
    Mutant("stretched-map-not-warned", "yoda/attention/classic.py",
           "if max((h - 1) / H, (w - 1) / W) > min((h + 1) / H, (w + 1) / W):",
           "if False:",
           ("tests/test_sampler.py", "tests/test_attention.py", "-k", "aspect_ratio or stretched"),
           "a transposed attention map is stretched to the image without a word"),
    # ---- the sixteenth session: the Python API review and a new user's training -----------------------------
    Mutant("yoda-card-steps-kept", "yoda/sampling/loop.py",
           "if own_steps and steps is not None and attention is not None and noise is None and spec.taus[-1] > 0:",
           "if False:",
           ("tests/test_checkpoint.py", "-k", "raises_the_models_steps"),
           "yoda.sample(net, lr, attention=...) keeps the card's 1 step: 13 % of the pixels refined, a seam"),
    Mutant("save-drops-sampling", "yoda/models/yoda_format.py",
           "**({\"sampling\": sampling} if sampling is not None else {}),", "",
           ("tests/test_checkpoint.py", "-k", "sampling_defaults"),
           "a saved copy of the embedded model forgets its DDIM step: DDPM over T = 1000"),
    Mutant("eval-steps-twenty", "yoda/evaluate.py",
           "steps = model_steps(adapter) if settings.steps is None else settings.steps",
           "steps = 20 if settings.steps is None else settings.steps",
           ("tests/test_evaluate.py", "-k", "settings_are_yoda_evals"),
           "evaluate() samples 20 steps where yoda eval takes the model's own (plain below bicubic)"),
    Mutant("psnr-u8-unchecked", "yoda/evaluate.py",
           "if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:",
           "if not isinstance(x, torch.Tensor):",
           ("tests/test_train.py", "-k", "psnr_u8"),
           "psnr_u8 of uint8 tensors: a plausible, wrong PSNR"),
    Mutant("window-overlap-quarter", "yoda/sampling/prepare.py",
           "overlap=default_overlap(w.size, 1 if latent else hr_grid(adapter)[0])",
           "overlap=w.size // 4",
           ("tests/test_sampler.py", "-k", "int_window"),
           "windows=40 overlaps by 10, off an SRDiff model's LR grid: refused after its encoder ran"),
    Mutant("trained-card-no-sampling", "yoda/training/glue.py",
           "space=cfg.loss.space, sampling=sampling or None)", "space=cfg.loss.space)",
           ("tests/test_train.py", "-k", "samples_as_its_config"),
           "a model trained with default_x4 samples with DDPM over T in yoda.sample"),
    Mutant("data-dir-ignored", "yoda/training/report.py",
           "    if d.source not in sub and d.val_source not in sub:", "    if False:",
           ("tests/test_train.py", "-k", "data_dir_and_makes"),
           "--data-dir is ignored without a word where the config trains on a folder"),
    Mutant("attention-steps-ignored", "yoda/attention/figure.py",
           "    return (float(refine_fraction(a, visited_steps(T, steps), T, lower_bound)[0]),",
           "    return (float(every_step_ratio(a, T, lower_bound)[0]),",
           ("tests/test_cli.py", "-k", "attention_steps"),
           "yoda attention --steps 2 prints the every-step ratio, not the run's"),
    Mutant("header-hash-order", "yoda/models/yoda_format.py",
           "    atomic_write_bytes(path, _sorted_header(save(tensors, metadata=metadata)))",
           "    atomic_write_bytes(path, save(tensors, metadata=metadata))",
           ("tests/test_checkpoint.py", "-k", "saved_twice"),
           "the same model saved twice gives files of other sha256"),
    Mutant("config-tuple-kept", "yoda/training/config.py",
           "            object.__setattr__(self, name, _json_form(getattr(self, name), name))", "            pass",
           ("tests/test_train.py", "-k", "notebook"),
           "a tuple in the model makes a run its own config.json cannot resume"),
    Mutant("trainer-relative-folders", "yoda/training/trainer.py",
           "        cfg, out = absolute_folders(cfg), os.path.abspath(out)\n", "",
           ("tests/test_train.py", "-k", "notebook"),
           "Trainer keeps a relative data folder: a resume from elsewhere trains on other images"),
    Mutant("ema-without-card", "yoda/training/trainer.py",
           "        self.model.card = model_card(cfg, self.schedule)", "        pass",
           ("tests/test_train.py", "-k", "notebook"),
           "yoda.sample(tr.ema, lr) samples the x0 model as eps"),
    Mutant("busy-line-under-q", "yoda/cli_upscale.py",
           "        failed += _run_one(item, work, one_line, where, debug, busy, quiet)",
           "        failed += _run_one(item, work, one_line, where, debug, busy)",
           ("tests/test_cli.py", "-k", "taken_up_later"),
           "-q still prints a line per input another --skip-existing run is making"),
    Mutant("trainer-global-rng", "yoda/training/trainer.py",
           "        with self.rng.use():\n            return self._train_step()",
           "        return self._train_step()",
           ("tests/test_train.py", "-k", "callers_generator or loop_of_ones_own"),
           "dropout draws from the caller's generator: the weights depend on the notebook's draws"),
    Mutant("cli-sampler-not-the-cards", "yoda/cli_parser.py",
           "                   default=None if own else sampler,", "                   default=sampler,",
           ("tests/test_cli.py", "-k", "names_no_steps"),
           "a model file whose card says ddpm is sampled with DDIM by the CLI"),
    Mutant("held-out-exact-only", "yoda/heldout.py",
           "COPY_DISTANCE = 0.2", "COPY_DISTANCE = 0.001",
           ("tests/test_train.py", "-k", "held_out"),
           "a JPEG copy of a held-out picture trains, and TRAINING.md says the model never saw it"),
    Mutant("held-out-by-name-only", "yoda/training/trainer.py",
           "if (held := held_out_copy(a))]", "if (held := None)]",
           ("tests/test_train.py", "-k", "held_out"),
           "a renamed copy of a held-out picture trains"),
    Mutant("held-out-unmirrored", "yoda/heldout.py",
           "for m in (mine, mine[:, ::-1])", "for m in (mine,)",
           ("tests/test_train.py", "-k", "held_out"),
           "a mirrored copy of a held-out picture (a flip augmentation saved to disk) trains"),
    Mutant("held-out-flat-matches", "yoda/heldout.py",
           "return None if sd < FLAT_LEVELS else", "return None if sd < 0 else",
           ("tests/test_train.py", "-k", "held_out"),
           "a flat grey image divides by zero when compared"),
    Mutant("diffusers-spacing-ignored", "yoda/sampling/loop.py",
           'spacing = defaults.get("spacing")', "spacing = None",
           ("tests/test_models.py", "-k", "scheduler_config_says"),
           "a diffusers model with Stable Diffusion's DDIM config samples 'trailing' instead of its own spacing"),
    Mutant("scheduler-object-classless", "yoda/models/latent.py",
           'config = {"_class_name": type(config).__name__, **config.config}', "config = dict(config.config)",
           ("tests/test_models.py", "-k", "scheduler_config_says"),
           "an Euler scheduler object clips x0 as DDPM does, and names no sampler"),
    Mutant("init-sampling-dropped", "yoda/training/trainer.py",
           "if not self.cfg.sampling and card.sampling:", "if False:",
           ("tests/test_train.py", "-k", "keeps_the_files"),
           "a fine-tune of the embedded model exports a model that samples 50 DDIM steps instead of the file's"),
    Mutant("resume-sampling-dropped", "yoda/training/trainer.py",
           'if not self.cfg.sampling and st.get("sampling_from_init"):', "if False:",
           ("tests/test_train.py", "-k", "keeps_the_files"),
           "a resumed fine-tune forgets the sampling its init file gave it"),
    # ---- eighteenth session: the H200 run's fixes ----------------------------------------------------------
    Mutant("triton-eager-on-fakes", "yoda_kernels/ops.py",
           "return (type(first) is torch.Tensor and", "return (first is not None and",
           ("tests/test_triton_launch.py", "-k", "launch_directly"),
           "fake tensors (and other subclasses) are launched for real instead of going through the op's fake"),
    Mutant("triton-eager-when-compiling", "yoda_kernels/ops.py",
           'first.device.type != "meta" and not torch.compiler.is_compiling()', 'first.device.type != "meta"',
           ("tests/test_triton_launch.py", "-k", "launch_directly"),
           "torch.compile traces into the Triton launch (Inductor re-emits it) instead of calling the opaque op"),
    Mutant("triton-eager-when-tracing", "yoda_kernels/ops.py",
           "and not torch.jit.is_tracing()\n", "\n",
           ("tests/test_triton_launch.py", "-k", "launch_directly"),
           "torch.jit.trace records no Triton op: the traced function drops the step"),
    Mutant("triton-eager-under-modes", "yoda_kernels/ops.py",
           "and torch._C._len_torch_dispatch_stack() == 0 and", "and",
           ("tests/test_triton_launch.py", "-k", "launch_directly"),
           "a dispatch mode (flop counter, debug mode) no longer sees the Triton op"),
    Mutant("triton-eager-under-vmap", "yoda_kernels/ops.py",
           " and not torch._C._are_functorch_transforms_active())", ")",
           ("tests/test_triton_launch.py", "-k", "launch_directly"),
           "vmap's batched tensors reach the launch, which cannot read their storage"),
    Mutant("tilestats-searched-again", "yoda_kernels/ops.py",
           "if given and not isinstance(stats, TileStats):", "if given:",
           ("tests/test_masked_step.py", "-k", "not_searched_again"),
           "a YODA step on a GPU syncs twice to search the sampler's own tile statistics for NaN"),
    Mutant("tuple-stats-trusted", "yoda_kernels/ops.py",
           "if given and not isinstance(stats, TileStats):", "if False:",
           ("tests/test_masked_step.py", "-k", "given_stats"),
           "a NaN in A goes unchecked when the caller gives plain tile statistics"),
    Mutant("launch-cdiv-floor", "yoda_kernels/triton/launch.py",
           "return -(-a // b)", "return a // b",
           ("tests/test_triton_launch.py", "-k", "strip_path or tile_stats"),
           "the last, partial strip or tile row of an image is never launched"),
    Mutant("philox-strip-halved", "yoda_kernels/triton/masked_step.py",
           "pixels, warps = ((philox_pixels if noise else 2048), 4) if unit_w else",
           "pixels, warps = ((1024 if noise else 2048), 4) if unit_w else",
           ("tests/test_triton_launch.py", "-k", "launch_config"),
           "Philox steps back at 8 pixels per thread, 6-7 points of copy bandwidth below on the H200"),
    Mutant("combine-wide-philox-strips", "yoda_kernels/triton/masked_combine.py",
           "launch_config(W, tile, noise_mode == NOISE_PHILOX, unit_w, philox_pixels=1024)",
           "launch_config(W, tile, noise_mode == NOISE_PHILOX, unit_w)",
           ("tests/test_triton_launch.py", "-k", "1024_pixel"),
           "masked_combine's Philox launch takes the unmeasured 2048-pixel strip (208-210 registers)"),
    # ---- the sampler's host time (nineteenth session) ----------------------------------------------------------
    Mutant("maskedops-fits-any-shape", "yoda_kernels/masked_ops.py",
           "isinstance(t, torch.Tensor) and t.shape == c.shape and t.dtype == c.dtype and t.device == c.device",
           "isinstance(t, torch.Tensor) and t.dtype == c.dtype and t.device == c.device",
           ("tests/test_masked_ops.py",),
           "MaskedOps hands a model output of another shape to the kernel instead of naming it"),
    Mutant("maskedops-grad-unchecked", "yoda_kernels/masked_ops.py",
           '_check_no_grad("masked_combine", self.backend.name, x, *d, self.c, self.A, noise)', "pass",
           ("tests/test_masked_ops.py", "-k", "refuse"),
           "a loop's combine returns a result whose backward silently gives no gradient"),
    Mutant("fast-step-unbounded", "yoda_kernels/checks.py",
           "0 <= seed <= philox.MAX_SEED and 0 <= step <= philox.MAX_STEP)",
           "0 <= seed <= philox.MAX_SEED)",
           ("tests/test_masked_ops.py", "-k", "bad_step_input"),
           "a step past the 31-bit counter reaches the kernel from a loop's fast path"),
    Mutant("finite-first-only", "yoda/sampling/spec.py",
           "        total = total + _sum(x)\n", "        pass\n",
           ("tests/test_sampler.py", "-k", "all_finite or inf_model"),
           "the periodic check looks at the model output only: a NaN state goes unnoticed"),
    Mutant("tau-fast-any-t", "yoda/masks.py",
           "and 1 <= t <= T and 0 <= lower_bound < math.inf:", "and 0 <= lower_bound < math.inf:",
           ("tests/test_masks.py",),
           "tau_at takes a t beyond 1..T without a word"),
    Mutant("check-lr-in-float32", "yoda/sampling/spec.py",
           "    lo, hi = masks.extremes(lr)  #", "    lo, hi = masks.extremes(lr.float())  #",
           ("tests/test_sampler.py", "-k", "float64_values_exactly"),
           "a float64 lr's range is checked rounded to float32: 1.25 + 1e-12 passes"),
    Mutant("fine-grid-bilinear", "yoda/attention/classic.py",
           "        m = F.adaptive_max_pool2d(m, (min(n, h), min(k, w)))\n", "        pass\n",
           ("tests/test_attention.py", "-k", "finer"),
           "DINO's patch grid on a small LR is shrunk bilinearly: a hot patch can fall to 1.6% of an equal one"),
    Mutant("nan-search-first-only", "yoda_kernels/checks.py",
           "        found = found | torch.isnan(t).any()\n", "        pass\n",
           ("tests/test_masked_step.py", "-k", "given_stats"),
           "a NaN in the given tile minimum goes unnoticed (only the maximum is searched)"),
    Mutant("ddp-resume-reseeds", "yoda/training/trainer.py",
           "            self.rng.set_states(*rank_rng[self.ranks.rank])",
           "            pass",
           ("tests/test_distributed_train.py", "-k", "dropout"),
           "a resumed DDP run with dropout draws step 1's masks again"),
    Mutant("card-without-masks-l", "yoda/training/glue.py",
           '        sampling.setdefault("lower_bound", cfg.loss.lower_bound)', "        pass",
           ("tests/test_train.py", "-k", "masks_lower_bound"),
           "a model trained with masks of l = 0.3 is sampled with l = 0.6"),
    Mutant("srdiff-dtype-of-state", "yoda/models/srdiff.py",
           "dt = cond.feas[0].dtype", "dt = x_t.dtype",
           ("tests/test_models.py", "-k", "weights_dtype"),
           "a float64 or half SRDiff model gets a float32 state and fails (dtype mismatch)"),
    # ---- twentieth session's review mends ------------------------------------------------------------------
    Mutant("heldout-no-turns", "yoda/heldout.py",
           "for k in range(4) for m in (mine, mine[:, ::-1])]", "for k in range(1) for m in (mine, mine[:, ::-1])]",
           ("tests/test_train.py", "-k", "refuses_held_out"),
           "a turned or upside-down copy of a held-out image trains"),
    Mutant("warning-every-rank", "yoda/cli.py",
           "    if where is None and not main_rank():\n        return\n", "",
           ("tests/test_cli.py", "-k", "torchrun_are_said"),
           "under torchrun every rank prints the model's warnings"),
    Mutant("diffbir-square-truncated", "yoda/models/diffbir.py",
           "    if H == W:\n        return enlarge_to, enlarge_to\n", "",
           ("tests/test_diffbir.py", "-k", "work_size"),
           "a 196x196 DiffBIR image is sampled at 512x511"),
    Mutant("stats-without-A", "yoda_kernels/ops.py",
           "    if A is None and stats is not None:", "    if False:",
           ("tests/test_masked_step.py", "-k", "bad_input and stats"),
           "masked_step(A=None, stats=...) ignores the stats: every pixel active"),
    Mutant("clip-truthy", "yoda_kernels/checks.py",
           "    if type(clip) is bool:\n        return clip", "    if True:\n        return bool(clip)",
           ("tests/test_masked_step.py", "-k", "bad_input and clip"),
           'clip="no" clips'),
    Mutant("triton-nan-tile-inactive", "yoda_kernels/triton/masked_step.py",
           "active = (tmax >= tau) | (tmax != tmax)", "active = tmax >= tau",
           ("tests/test_masked_step.py", "-k", "nan_in_A_leaves"),
           "a NaN of A in a direct call makes its whole tile inactive on Triton"),
    Mutant("srdiff-file-as-sr3", "yoda/models/sr3_load.py",
           "        if isinstance(obj.get(\"model\"), Mapping) or", "        if False and isinstance(obj.get(\"model\"), Mapping) or",
           ("tests/test_checkpoint.py", "-k", "other_kind"),
           "an SRDiff file loaded as sr3 asks for SR3's JSON"),
    Mutant("sr3-unknown-keys-silent", "yoda/models/sr3_load.py",
           "    if unknown:  # a misspelt", "    if False:  # a misspelt",
           ("tests/test_models.py", "-k", "does_not_read"),
           "a misspelt norm_groups silently keeps 32 groups"),
    Mutant("sigma-to-t-flat", "yoda/sampling/solvers.py",
           "w = 0.0 if hi == lo else min(", "w = min(",
           ("tests/test_solvers.py", "-k", "sigma_to_t"),
           "a sigma table ending in two equal sigmas divides by zero"),
    Mutant("dino-reread-silent", "yoda/sampling/prepare.py",
           "            if name in _READ_BEFORE:", "            if False:",
           ("tests/test_dino.py", "-k", "read_again"),
           "a loop over yoda.sample with a DINO name reads 85 MB per call without a word"),
    Mutant("sides-unchecked", "yoda_kernels/checks.py",
           "    if max(t.shape[1:], default=0) >= 2**31:", "    if False:",
           ("tests/test_tile_stats.py", "-k", "2_to_the_31"),
           "a side of 2**31 pixels gives an uninitialised output on CUDA"),
    Mutant("empty-batch-steps", "yoda/training/trainer.py",
           "        if not (counts and float(counts[0]) == 0.0):", "        if True:",
           ("tests/test_train.py", "-k", "no_active_value"),
           "a batch with no active pixel moves the weights along AdamW's momentum"),
    Mutant("init-upsampling-ignored", "yoda/training/trainer.py",
           '        if up != "torch":', "        if False:",
           ("tests/test_train.py", "-k", "init_refuses_another"),
           "a fine-tune of a released model trains on torch's bicubic in place of its Pillow up(lr)"),
    Mutant("train-clip-input-ignored", "yoda/training/trainer.py",
           'cfg.data.scale, bool(cfg.model.get("clip_input", True)))', "cfg.data.scale)",
           ("tests/test_train.py", "-k", "clamps_as_the_model"),
           "a model that samples without clamping its residual is trained on clamped residuals"),
    Mutant("decay-in-warmup", "yoda/training/config.py",
           "        if 0 < self.decay_from < self.warmup:", "        if False:",
           ("tests/test_train.py", "-k", "decay_that_starts"),
           "a decay that starts in the warm-up drops the learning rate at once after it"),
    Mutant("pad-window-splits", "yoda/sampling/tiles.py",
           "wy, wx = (H if window >= eh else window), (W if window >= ew else window)", "wy, wx = window, window",
           ("tests/test_sampler.py", "-k", "window_wider_than_the_image"),
           "pad=True with a window wider than the image lays 4 windows a step"),
    Mutant("stack-scalar-cat", "yoda/adapters.py",
           "        if first.dim() == 0:  # a scalar", "        if False:  # a scalar",
           ("tests/test_sampler.py", "-k", "stack_conds_default"),
           "a cond holding a 0-d tensor fails with the default window batch"),
    Mutant("graph-key-no-options", "yoda/sampling/speed.py",
           "repr((sp.compile, sp.compile_options, sp.autocast))", '""',
           ("tests/test_speed.py", "-k", "keys_the_options"),
           "a GraphCache replays a float32 graph for an autocast bf16 call"),
    Mutant("graph-oom-no-retry", "yoda/sampling/speed.py",
           "if not (out_of_memory(e) and self._graphs):", "if True:",
           ("tests/test_speed.py", "-k", "keys_the_options"),
           "a capture short of memory fails while older graphs hold their pools"),
    Mutant("graph-windows-any-batch", "yoda/sampling/tiles.py",
           "            if self.fixed_batch:  # padded", "            if False:  # padded",
           ("tests/test_speed.py", "-k", "one_size"),
           "windows under cuda_graphs capture a graph for every batch size"),
    Mutant("compile-own-cudagraphs", "yoda/sampling/speed.py",
           'if torch.device(device).type == "cuda" and (opts.get("mode")', 'if False and (opts.get("mode")',
           ("tests/test_speed.py", "-k", "own_cuda_graphs"),
           "compile mode max-autotune on a GPU breaks the two-call solvers"),
    Mutant("autocast-float64-silent", "yoda/sampling/speed.py",
           "        if dt == torch.float64:", "        if False:",
           ("tests/test_speed.py", "-k", "float64_network"),
           "autocast on a float64 network changes nothing, without a word"),
    # ---- twenty-first pass ---------------------------------------------------------------------------------
    Mutant("diffbir-grid-latent-multiple", "yoda/models/diffbir.py",
           "_round_up(_round_up(n, self.pad_multiple) // self.latent_factor, self.latent_multiple)",
           "_round_up(n, self.pad_multiple) // self.latent_factor",
           ("tests/test_diffbir.py", "-k", "state_grid"),
           "DiffBIR's predicted grid forgets the latent padding: windows checked on the wrong grid"),
    Mutant("window-check-after-prepare", "yoda/sampling/prepare.py",
           "    if w is not None and grid is not None:", "    if False:",
           ("tests/test_models.py", "-k", "bad_window_is_refused"),
           "a bad window is refused only after the VAE encode"),
    Mutant("triton-op-unchecked", "yoda_kernels/triton/launch.py",
           "            check(*args)\n", "            pass\n",
           ("tests/test_triton_launch.py", "-k", "checks"),
           "a direct Triton op call runs seed 2**32 as 0 and reads a float16 c as float32"),
    Mutant("coefs-negative-zero", "yoda_kernels/checks.py",
           "coefs = [v + 0.0 for v in struct.unpack(", "coefs = [v for v in struct.unpack(",
           ("tests/test_triton_launch.py", "-k", "signed_zeros"),
           "a -0.0 weight gives -0 on the reference and C++, +0 on Triton"),
    Mutant("loader-initialises", "yoda/checkpoint.py",
           '    with torch.device("meta"):\n        model = build()\n    check_state_dict(model, sd, where, hint)',
           '    if True:\n        model = build()\n    check_state_dict(model, sd, where, hint)',
           ("tests/test_checkpoint.py", "-k", "materialise"),
           "a loader initialises a real network first: random draws, and the old fork_rng race"),
    Mutant("materialise-keeps-file-dtype", "yoda/checkpoint.py",
           "own[k].dtype if k in own else v.dtype", "v.dtype",
           ("tests/test_checkpoint.py", "-k", "materialise"),
           "a float16 file gives a float16 model"),
    Mutant("interpreter-unlocked", "yoda_kernels/triton/launch.py",
           "if t.is_cuda else _INTERPRETER_LOCK", "if t.is_cuda else threading.Lock()",
           ("tests/test_triton_launch.py", "-k", "take_turns"),
           "Triton interpreter launches from two threads at once"),
    Mutant("allow-list-user-entry-removed", "yoda/attention/dino.py",
           "if allow is None or argparse.Namespace in torch.serialization.get_safe_globals():", "if allow is None:",
           ("tests/test_dino.py", "-k", "allow_list or threads_and_keep"),
           "a DINO load removes the user's own allow-list entry"),
    Mutant("autocast-other-half-dtype", "yoda/sampling/speed.py",
           "elif dt in AUTOCAST_DTYPES.values() and dt != want:", "elif False:",
           ("tests/test_speed.py", "-k", "other_half_dtype"),
           "a float16 network under autocast bf16 fails in torch's autocast, after prepare"),
    Mutant("fp16-x0-overflow", "yoda/sampling/prepare.py",
           "    if dtype == torch.float16:\n        x0 = x0.clamp(", "    if False:\n        x0 = x0.clamp(",
           ("tests/test_solvers.py", "-k", "beyond_its_range"),
           "a float16 state's x0 beyond 65504 becomes Inf: NaN state at step 0"),
    Mutant("attention-callable-in-inference-mode", "yoda/sampling/prepare.py",
           "        with torch.inference_mode(False), torch.no_grad():\n            attention = attention(lr)",
           "        with torch.no_grad():\n            attention = attention(lr)",
           ("tests/test_sampler.py", "-k", "may_use_gradients"),
           "a Grad-CAM attention callable fails inside yoda.sample's inference mode"),
    Mutant("edge-three-pixel-ring", "yoda/attention/classic.py",
           "inner = min(g.shape[-2:]) > 3", "inner = min(g.shape[-2:]) >= 3",
           ("tests/test_attention.py", "-k", "three_pixel"),
           "a 3 x 3 edge map is constant whatever the image"),
    Mutant("eval-grey-scored-in-colour", "yoda/evaluate.py",
           "sr_u8 = output_u8(sr, grey)", "sr_u8 = output_u8(sr, False)",
           ("tests/test_evaluate.py", "-k", "grey_image_is_scored"),
           "eval scores a grey image on a colour output upscale never writes"),
    Mutant("eval-no-warm-up", "yoda/evaluate.py",
           "            if tuple(hr.shape) not in warmed:", "            if False:",
           ("tests/test_evaluate.py", "-k", "sampled_once_untimed"),
           "the first timed row pays for the start-up"),
    Mutant("model-given-twice", "yoda/cli_parser.py",
           "        if self.dest in seen:", "        if False:",
           ("tests/test_cli.py", "-k", "eval_command"),
           "yoda eval --model A --model B evaluates B alone, unnamed"),
    Mutant("noise-count-ignored", "yoda/sampling/loop.py",
           "            steps = steps if n is None else n - 1", "            pass",
           ("tests/test_sampler.py", "-k", "noise_gives_the_step_count"),
           "explicit noise= does not give the step count; the model's own steps refuse it"),
    Mutant("callback-in-inference-mode", "yoda/sampling/loop.py",
           "                with torch.inference_mode(False), torch.no_grad():  # an in-place op",
           "                if True:  # an in-place op",
           ("tests/test_sampler.py", "-k", "cannot_change_the_image"),
           "a callback's mul_ of x changes the image without an error"),
    Mutant("srdiff-window-grid-late", "yoda/sampling/prepare.py",
           "    if (window % unit or overlap % unit) and any(n > window for n in grid):", "    if False:",
           ("tests/test_sampler.py", "-k", "errors_name_the_argument_the_caller"),
           "an SRDiff window off the LR grid is refused only after the RRDB ran"),
    Mutant("seed-drawn-first", "yoda/sampling/loop.py",
           "    draw = seed is None and noise is None", "    draw = seed is None",
           ("tests/test_sampler.py", "-k", "seed_none_draws"),
           "explicit noise= still draws a seed from the user's generator"),
    Mutant("resume-log-kink", "yoda/training/trainer.py",
           "            self.rows.pop()", "            pass",
           ("tests/test_train.py", "-k", "resumed_run_logs"),
           "a resumed run keeps the stop's row and averages the next over the steps after the stop"),
    Mutant("resume-images-unchecked", "yoda/training/trainer.py",
           "        if change:  # a resume that cannot match", "        if False:  # a resume that cannot match",
           ("tests/test_train.py", "-k", "other_images"),
           "a resume on other training images says nothing"),
    Mutant("from-uint8-asarray", "yoda/images.py",
           'arr = _samples(_to_srgb(arr, Path("arr")), Path("arr"))', "arr = np.asarray(arr)",
           ("tests/test_images.py", "-k", "pil_image_of_any"),
           "from_uint8 of a palette image reads its indices as grey"),
    Mutant("windows-pipe-raises", "yoda/cli_models.py",
           'or (sys.platform == "win32" and e.errno == errno.EINVAL)', "",
           ("tests/test_cli.py", "-k", "windows_closed_pipe"),
           "a closed pipe on Windows counts every later image as failed"),
    Mutant("plot-log-twice", "yoda/plots.py",
           "        if r in real[:i]:", "        if False:",
           ("tests/test_plots.py", "-k", "twice"),
           "one log given twice draws one curve over the other under two legend entries"),
    Mutant("fig5-no-fit-caption", "yoda/figures/draw.py",
           'if used else "no lines (a fit needs 2 bins with pixels)"', "",
           ("tests/test_figures.py", "-k", "degree_fitted"),
           "Fig. 5 with one bin names a polyfit it did not draw"),
    Mutant("resume-init-silent", "yoda/training/trainer.py",
           "        if self.cfg.init and not (then and", "        if False and not (then and",
           ("tests/test_train.py", "-k", "init_named_on_resume"),
           "an --init naming another file on resume is dropped without a word"),
    Mutant("mps-not-refused", "yoda/sampling/spec.py",
           '        if d is not None and d.type == "mps":', "        if False:",
           ("tests/test_sampler.py", "-k", "mps"),
           "an lr on MPS fails deep inside at the first float64 tensor"),
    Mutant("eval-partial-csv-as-whole", "yoda/cli_models.py",
           "            out, partial = part, f\"{partial}; written to {part}\"",
           "            partial = f\"{partial}; written to {part}\"",
           ("tests/test_cli.py", "-k", "eval_stopped"),
           "a stopped eval writes its partial rows over -o, unmarked"),
    Mutant("scheduler-config-any-object", "yoda/models/latent.py",
           "    if model_key is not None:", "    if False:",
           ("tests/test_models.py", "-k", "every_sampling_key"),
           "a VAE passed as scheduler_config is read as a linear T = 1000 eps schedule"),
    Mutant("latent-modules-apart", "yoda/models/latent.py",
           "        if len({d for _, d in found}) > 1:", "        if False:",
           ("tests/test_models.py", "-k", "half_precision_weights"),
           "a UNet and a VAE on different devices fail deep in torch"),
    Mutant("diffbir-stage1-range", "yoda/models/diffbir.py",
           "            if lo < -0.5 or hi > 1.5:", "            if False:",
           ("tests/test_diffbir.py", "-k", "condition_sources"),
           "a [-1, 1] stage-1 image conditions DiffBIR without a word"),
    Mutant("own-steps-uncovered-silent", "yoda/sampling/loop.py",
           "        if enough is None:  # (it kept the model's steps without a word)", "        if False:",
           ("tests/test_checkpoint.py", "-k", "raises_the_models_steps"),
           "the model's steps that leave pixels unrefined are kept without a word when no count covers them"),
    Mutant("compile-error-unnoted", "yoda/sampling/speed.py",
           '            if self._speed.compile and hasattr(e, "add_note"):', "            if False:",
           ("tests/test_speed.py", "-k", "failed_compiles"),
           "an error of torch's compiled code reads like the network's own"),
    Mutant("training-record-forgets-sessions", "yoda/training/report.py",
           '    return f"{before[1]}; {last}" if before else last', "    return last",
           ("tests/test_train.py", "-k", "earlier_commands"),
           "TRAINING.md of a run resumed twice names only the session before the last"),
    Mutant("own-buffers-unsaid", "yoda/cli_upscale.py",
           "    if own > max_memory:", "    if False:",
           ("tests/test_cli.py", "-k", "window_notes"),
           "--max-memory far below the image's own buffers is taken as if it bounded the run"),
    Mutant("small-windows-unsaid", "yoda/cli_upscale.py",
           "    if side < SMALL_WINDOW:", "    if False:",
           ("tests/test_cli.py", "-k", "window_notes or tiled_over_max_memory"),
           "tiny automatic windows (slow, soft) are taken without a word"),
    Mutant("oom-input-unnamed", "yoda/cli.py",
           'return f"{printable(working[0][0])}: out of memory', 'return f"out of memory',
           ("tests/test_cli.py", "-k", "out_of_memory_input"),
           "an out-of-memory error in a folder run does not say which image"),
    Mutant("window-bar-missing", "yoda/sampling/tiles.py",
           "        if self.progress and len(groups) > 1:", "        if False:",
           ("tests/test_sampler.py", "-k", "progress_bar"),
           "a step of many windows shows no progress"),
    Mutant("eval-uncovered-silent", "yoda/cli_upscale.py",
           "        if tau > 0:\n            left.append(", "        if False:\n            left.append(",
           ("tests/test_cli.py", "-k", "unrefined"),
           "eval's YODA rows at too few steps read as the method's loss, without a word"),
    Mutant("rank-outside-world", "yoda/torchrun.py",
           "    if world < 1 or not 0 <= rank < world:", "    if False:",
           ("tests/test_cli.py", "-k", "rank_and_world"),
           "RANK=1 alone upscales every input and miscounts"),
    Mutant("host-wait-in-cpp", "yoda/cli_upscale.py",
           "    if not host:\n        wait_for_host(addr, port)\n", "",
           ("tests/test_cli.py", "-k", "rank_and_world or meet_in_the_store"),
           "a rank whose store host is not up waits deaf to signals in TCPStore's C++ connect"),
    Mutant("every-rank-exits-2", "yoda/cli_upscale.py",
           "    if total and rank == 0:  # rank 0 alone exits 2", "    if total:  # rank 0 alone exits 2",
           ("tests/test_cli.py", "-k", "meet_in_the_store"),
           "every rank exits 2: torchrun stops rank 0 before its closing line"),
    Mutant("rank-share-of-one-silent", "yoda/cli_upscale.py",
           "        self.several = total > 1 if several is None else several", "        self.several = total > 1",
           ("tests/test_cli.py", "-k", "rank_and_world"),
           "a rank with one input of a sharded run prints no closing line"),
    Mutant("coefs-float64-decide", "yoda_kernels/checks.py",
           '        coefs = [v + 0.0 for v in struct.unpack(f"{len(coefs)}f", struct.pack(f"{len(coefs)}f", *coefs))]',
           "        coefs = [float(v) + 0.0 for v in coefs]",
           ("tests/test_masked_step.py", "-k", "float32_first"),
           "the reference and Triton draw noise for a sigma that is 0 in C++'s float32"),
    Mutant("coefs-beside-schedule", "yoda_kernels/ops.py",
           "    elif any(v is not None for v in schedule.values()):", "    elif False:",
           ("tests/test_masked_step.py", "-k", "beside_coefs"),
           "masked_step(coefs=k, prediction='x0') ignores prediction without a word"),
    Mutant("nan-check-on-meta", "yoda_kernels/checks.py",
           '    return t.device.type != "meta" and not torch.compiler.is_compiling()',
           "    return not torch.compiler.is_compiling()",
           ("tests/test_masked_step.py", "-k", "meta_tensors"),
           "the public ops fail on the meta device in their NaN checks"),
    Mutant("nan-check-compiled", "yoda_kernels/checks.py",
           '    return t.device.type != "meta" and not torch.compiler.is_compiling()',
           '    return t.device.type != "meta"',
           ("tests/test_masked_step.py", "-k", "compile_whole"),
           "torch.compile(fullgraph=True) of an op breaks at the NaN check"),
    Mutant("q-sample-ab-grad-dropped", "yoda_kernels/ops.py",
           '    _check_no_grad("masked_q_sample", backend, x0, c, noise, A, ab, tau)',
           '    _check_no_grad("masked_q_sample", backend, x0, c, noise, A)',
           ("tests/test_masked_q_sample.py", "-k", "gradients_of_ab"),
           "a gradient-carrying ab passes C++ / Triton and its gradient is dropped"),
    Mutant("rank0-exits-first", "yoda/cli_upscale.py",
           "    if host or rank == 0:  # the host's store closes", "    if host:  # the host's store closes",
           ("tests/test_cli.py", "-k", "meet_in_the_store"),
           "under torchrun's agent store rank 0 exits 2 before the others finish: torchrun stops them"),
    Mutant("figures-into-images", "yoda/cli.py",
           "    if a.images and out.exists() and os.path.samefile(out, a.images):", "    if False:",
           ("tests/test_figures.py", "-k", "output_folder_before"),
           "yoda figures writes its PNGs among the photos, and the next run reads them as photos"),
    Mutant("figure-ratio-unchecked", "yoda/attention/figure.py",
           "    if ratio is not None and not (isinstance(ratio, numbers.Real) and 0.0 <= float(ratio) <= 1.0):",
           "    if False:",
           ("tests/test_attention.py", "-k", "steps"),
           "attention_figure draws a ratio of 2 or NaN in its title"),
    Mutant("fig5-fit-extrapolated", "yoda/figures/draw.py",
           "    xs = np.linspace(c.min(), c.max(), 101)", "    xs = np.linspace(0.0, 1.0, 101)",
           ("tests/test_figures.py", "-k", "over_their_bins"),
           "Fig. 5's fit lines run past their bins, and their extrapolation sets the axis"),
    Mutant("key-labels-overlap", "yoda/attention/figure.py",
           "        ly.append(max(y - 7, ly[-1] + _KEY_LINE) if ly else y - 7)", "        ly.append(y - 7)",
           ("tests/test_attention.py", "-k", "colour_key_labels"),
           "the key's M(t=...) labels of close thresholds print over each other"),
    Mutant("key-panel-height", "yoda/attention/figure.py",
           "    key_h, key_w = max(Hp, key[0]), max(cell_w, key[1])", "    key_h, key_w = Hp, max(cell_w, key[1])",
           ("tests/test_attention.py", "-k", "whole_beside"),
           "the key takes a short panel's height, and its labels print over each other"),
    Mutant("key-column-width", "yoda/attention/figure.py",
           "[_KEY_BAR + 38 + _ink(s, font)[2] for s in labels]", "[]",
           ("tests/test_attention.py", "-k", "whole_beside"),
           "the key in a narrow image's column cuts its labels"),
    Mutant("tick-labels-crowded", "yoda/drawing.py",
           "            if i % every == 0:", "            if True:",
           ("tests/test_figures.py", "-k", "tick_labels_of_many"),
           "Fig. 3's x labels of 20 lower bounds print over each other"),
    Mutant("prefix-collision-silent", "yoda/attention/dino.py",
           "        if k in out:", "        if False:",
           ("tests/test_dino.py", "-k", "one_key_of_two"),
           "a student's and a teacher's weights in one dict load whichever came last"),
    Mutant("hf-qkv-order", "yoda/attention/dino.py",
           "torch.cat([parts[n] for n in _HF_QKV])", "torch.cat([parts[n] for n in reversed(_HF_QKV)])",
           ("tests/test_dino.py", "-k", "transformers"),
           "Hugging Face's DINO loads with q and v swapped: a wrong map, no error"),
    Mutant("torchscript-read", "yoda/checkpoint.py",
           '    if any(i.filename.endswith("/constants.pkl") or "/code/" in i.filename for i in infos):',
           "    if False:",
           ("tests/test_dino.py", "-k", "torchscript"),
           "a TorchScript archive reaches torch.load, whose advice is to run its code"),
    Mutant("resnet-fine-grid-shifted", "yoda/attention/classic.py",
           "        centres = (0.5 if n > h else cell_centre, 0.5 if k > w else cell_centre)",
           "        centres = (cell_centre, cell_centre)",
           ("tests/test_dino.py", "-k", "finer_than_the_image"),
           "a ResNet's pooled grid is resampled as if its cells were still the network's, shifting the map"),
]


def repo_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the working tree, plus the built extension."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True, text=True).stdout
    files = [f for f in out.split("\0") if f and (ROOT / f).is_file()]
    files += [os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / "yoda_kernels" / "_C*.so"))]
    return sorted(set(files))


def make_copy(dest: Path) -> None:
    for f in repo_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)


def check_list(mutants: list[Mutant]) -> list[str]:
    """Every snippet occurs exactly once in its file and the mutant changes it."""
    problems = []
    for m in mutants:
        path = ROOT / m.file
        text = path.read_text() if path.is_file() else ""
        n = text.count(m.old)
        if n != 1:
            problems.append(f"{m.name}: the snippet occurs {n} times in {m.file} (must be 1): {m.old!r}")
        if m.old == m.new:
            problems.append(f"{m.name}: old == new")
    names = [m.name for m in mutants]
    problems += [f"duplicate name {n}" for n in sorted({n for n in names if names.count(n) > 1})]
    return problems


def pytest_env(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never meet the mutant's cached bytecode
    env.pop("YODA_ALLOW_MISSING_BACKENDS", None)  # the copy has the extension: every backend must run
    return env


def run_pytest(copy: Path, args: tuple, timeout: float) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=copy, env=pytest_env(copy), capture_output=True, text=True, timeout=timeout)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, f"timed out after {timeout:.0f} s"
    return rc, out, time.perf_counter() - t0


def first_failure(out: str) -> str:
    for line in out.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            return line[:160]
    lines = [l for l in out.splitlines() if l.strip()]
    return lines[-1][:160] if lines else ""


def check_imports(copy: Path) -> None:
    """The copy's modules are the ones imported (not the working tree's, e.g. through an editable install)."""
    code = ("import yoda, yoda_kernels, yoda_kernels._C as c; "
            "print(yoda.__file__); print(yoda_kernels.__file__); print(c.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=pytest_env(copy), check=True,
                         capture_output=True, text=True).stdout.split()
    outside = [p for p in out if not Path(p).resolve().is_relative_to(copy.resolve())]
    if len(out) != 3 or outside:
        raise SystemExit(f"the copy does not import its own modules: {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs of each test selection")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    a = ap.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in a.names if n not in known]
    if unknown:
        ap.error(f"unknown mutant(s) {unknown}; --list shows them")
    todo = [known[n] for n in a.names] if a.names else MUTANTS
    if a.list:
        for m in todo:
            print(f"{m.name:24s} {m.file}: {m.why}\n{'':24s} {shlex.join(['pytest', *m.tests])}")
        return 0
    problems = check_list(todo)
    if problems:
        print("the mutant list is out of date:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2

    copy = Path(tempfile.mkdtemp(prefix="yoda_mutants_"))
    try:
        make_copy(copy)
        check_imports(copy)
        print(f"copy: {copy}")
        if not a.no_baseline:
            for sel in dict.fromkeys(m.tests for m in todo):
                rc, out, secs = run_pytest(copy, sel, a.timeout)
                print(f"baseline  {'pass' if rc == 0 else 'FAIL':8s} {secs:6.1f} s  {shlex.join(['pytest', *sel])}",
                      flush=True)
                if rc != 0:
                    print(out[-3000:], file=sys.stderr)
                    print("an unmutated selection fails: fix that first", file=sys.stderr)
                    return 2
        results = []
        for m in todo:
            path = copy / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new, 1))
            try:
                rc, out, secs = run_pytest(copy, m.tests, a.timeout)
            finally:
                path.write_text(original)
            status = "caught" if rc in (1, 2) else "SURVIVED" if rc == 0 else f"ERROR rc={rc}"
            results.append((m, status))
            print(f"{m.name:24s} {status:9s} {secs:6.1f} s  {first_failure(out) if rc in (1, 2) else m.why}",
                  flush=True)
            if rc not in (0, 1, 2):
                print(out[-3000:], file=sys.stderr)
        caught = sum(s == "caught" for _, s in results)
        print(f"\n{caught} of {len(results)} mutants caught")
        bad = [m.name for m, s in results if s != "caught"]
        if bad:
            print("not caught: " + ", ".join(bad))
        return 0 if not bad else 1
    finally:
        if a.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
