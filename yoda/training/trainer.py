"""Trainer: AdamW + EMA + grad clipping, checkpoints with resume, validation, a tqdm bar and a CSV log.

Files in ``out``: checkpoint.pt (resume state), log.csv, config.json, and at the end the EMA weights in the
"yoda" format (model.safetensors unless told otherwise). Every file is written through yoda._io (atomic).

The checkpoint is a torch file holding {"step", "config" (TrainConfig.to_dict()), "model", "ema", "opt",
"gen", "torch_rng" / "cuda_rng" / "rank_rng" (dropout's generators, every rank's), "rows", "pending" (the log
average since the last regular row, at a stop), "images" (image_digests: a resume on other images warns),
"init_sha256", "loss_version", "sampling_from_init", "upsampling"}: a run resumes only with the config it was
started with (RESUME_FREE may differ). With ``cfg.init`` a run starts from that model file's weights (fine-tuning;
load_init), and its hash is kept; a resumed run keeps what it started from (another --init is refused).

Under torchrun (``ranks`` with world > 1, yoda.training.distributed) the model runs in DistributedDataParallel,
each rank takes its share of the global batch drawn from the shared generator, and only rank 0 validates and
writes files; the checkpoint is the same as one process's and resumes with any number of ranks.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import signal
import time
import warnings
from typing import Callable, Optional

import torch

from .. import data as _data
from ..adapters import hr_grid
from .._io import append_whole, atomic_write_bytes, atomic_write_text, file_sha256, unportable
from ..checkpoint import first_line, load_failure, load_state_dict_checked, not_torch, zip_refusal
from ..devices import cpu_default_device, rank_device, resolve_device, torch_defaults
from ..errors import NonFiniteError, lr_from_images
from ..evaluate import psnr_u8
from ..heldout import held_out_lines, warn_of_shared
from .config import TrainConfig, _json_form, absolute_folders, check_run_args, rate_jump, weights_path
from .finetune import read_init
from .distributed import Ranks, all_reduce_sum, barrier, check_group, gather_to_main, local_batch, wrap_ddp
from .glue import build_model, make_denoiser, model_card, sampling_adapter, whole_image_maps
from .loss import alphas_cumprod, diffusion_loss, draw_noise_level, space_tensors
from .rng import TorchRNG
from .stopping import STOP_SIGNALS, stop_on_interrupt

CSV_FIELDS = ("step", "loss", "lr", "time", "val_psnr_plain", "val_psnr_yoda")  # "lr": the learning rate


# The loss a checkpoint was trained with: 2 (2026-12-03) masks a crop with the crop of its whole image's map
# (glue.whole_image_maps); 1, a checkpoint without the key, made the map of each crop.
LOSS_VERSION = 2

RUN_FILES = ("checkpoint.pt", "log.csv", "config.json", "TRAINING.md")  # what a run writes besides its weights


def check_weights_name(name: str) -> None:
    """The file name of the exported weights (--weights-name), before any training: a plain name in the run's
    folder, not one of the run's own files (the config written after it replaced the weights; the checkpoint
    written over made the run impossible to resume)."""
    if why := unportable(name) if isinstance(name, str) else "not a string":  # yoda._io's one rule: runs anywhere
        raise ValueError(f"weights_name (--weights-name) must be a plain file name in the run's folder, got {name!r} "
                         f"({why})")
    if name in RUN_FILES:
        raise ValueError(f"weights_name (--weights-name) {name!r} is one of the run's own files "
                         f"({', '.join(RUN_FILES)}): choose another name, e.g. model.safetensors")
    if not name.endswith(".safetensors") or name == ".safetensors":  # (that alone: a hidden file, unseen by ls)
        raise ValueError(f"weights_name (--weights-name) {name!r} must be a name ending in .safetensors: the weights "
                         f"are a safetensors file, e.g. model.safetensors")


# May change when a run is resumed: where it ends and its learning rate decays, how often it logs, validates (and
# on what) and checkpoints, its name, and how the exported model samples (none of them changes a training step);
# init is read only at the start (the checkpoint's own is kept, and a checkpoint from before init existed has none);
# a resumed config naming no sampling keeps the one its run took from its init file (sampling_from_init).
RESUME_FREE = ("steps", "decay_from", "log_every", "val_every", "val_steps", "ckpt_every", "init", "sampling", "name",
               "data.val_source", "data.val_crops", "data.val_crop")


def _resume_view(d: dict) -> dict:
    """A config dict as resume compares it: flat "section.key" entries (so a difference names its field), without
    RESUME_FREE, with image folders and an attention's weights as absolute real paths (data/small and ./data/small
    are one folder)."""
    flat = {}
    for k, v in d.items():
        if k in RESUME_FREE:
            continue
        if isinstance(v, dict) and k in ("data", "loss", "model"):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items() if f"{k}.{kk}" not in RESUME_FREE})
        else:
            flat[k] = v
    if isinstance(v := flat.get("data.source"), str) and os.path.isdir(v):
        flat["data.source"] = os.path.realpath(v)
    if isinstance(v := flat.get("attention"), str):  # dino-*:PATH (stored relative before 2026-12-05)
        flat["attention"] = weights_path(v, os.path.realpath)
    return flat


class Trainer:
    """Train ``cfg`` into the folder ``out``: device "auto" / "cpu" / "cuda" / "cuda:N" / a torch.device; progress,
    a tqdm bar (None: on a terminal only); resume, from ``out``'s checkpoint.pt if any (False: afresh, over it).

    Randomness (crops, flips, steps, noise) comes from one CPU torch.Generator saved in the checkpoint, so a
    resumed run on the CPU equals an uninterrupted one. ``ranks``: this process's rank in a data-parallel run
    (the process group must exist; yoda.training.distributed), None for a single process. ``on_row(row, total,
    final)``: called on rank 0 with each row the run logs (log.csv's columns), its total steps, and whether it is the
    run's last row (its end, or a stop's)."""

    def __init__(self, cfg: TrainConfig, out: str, *, device: str = "auto", progress: Optional[bool] = None,
                 resume: bool = True, weights_name: str = "model.safetensors", ranks: Optional[Ranks] = None,
                 on_row: Optional[Callable[[dict, int, bool], None]] = None):
        # built outside a caller's inference_mode (its parameters could not train) and under torch's defaults (a
        # float64 default built a float64 model, whose first float32 batch failed); not decorators: their frames
        # would stand between the warnings below and the caller's line
        with torch.inference_mode(False), torch_defaults():
            check_weights_name(weights_name)
            if not isinstance(cfg, TrainConfig):
                raise TypeError(f"cfg must be a TrainConfig (TrainConfig.from_dict(d) of a dict), got "
                                f"{type(cfg).__name__}")
            if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
                raise TypeError(f"out must be the run's folder (a path), got {out!r}")
            # absolute, as train_main makes them: a relative folder resumed from another working folder read others
            cfg, out = absolute_folders(cfg), os.path.abspath(out)
            self.ranks = ranks or Ranks()
            local_batch(cfg.batch, self.ranks.world)  # the global batch must split evenly over the ranks
            check_group(self.ranks)
            self.cfg, self.out, self.weights_name = cfg, out, weights_name
            self.on_row = on_row  # each row logged, on rank 0 (class docstring): yoda train's lines
            self.progress = progress if self.ranks.main else False  # None: tqdm draws on a terminal only
            self.device = rank_device(resolve_device(device), self.ranks.world, self.ranks.local_rank)
            self.schedule = cfg.make_schedule()
            self.ab = alphas_cumprod(self.schedule)
            self.rng = TorchRNG(self.device)  # torch's generators as the trainer's own: dropout draws from them
            with self.rng.seeded(cfg.seed):  # model init; the caller's generators are left as they were
                self.model = build_model(cfg.model).to(self.device)
                self.rng.keep()
            if self.ranks.world > 1:  # dropout: each rank its own masks (a resumed checkpoint's, load_checkpoint)
                self.rng.reseed(cfg.seed + 1 + self.ranks.rank)
            self.model.card = model_card(cfg, self.schedule)  # yoda.sample(tr.ema, lr) samples what it was trained for
            self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                         weight_decay=cfg.weight_decay)
            self.gen = torch.Generator().manual_seed(cfg.seed)
            self.step = 0
            self.init_sha256: Optional[str] = None  # of the cfg.init file, hashed when it is read
            self.sampling_from_init = False  # cfg.sampling is the init file's (the config named none): kept on resume
            self.upsampling = "torch"  # up(lr): torch's bicubic, or an init file's (_set_upsampling)
            validate = cfg.validates
            self._check_sizes_and_sampling(validate)  # before the images are read
            self.extractor = None
            if cfg.loss.yoda or validate:
                from .. import attention

                try:
                    self.extractor = attention.get(cfg.attention)
                except (OSError, ValueError) as e:  # the weights of dino-vits8:PATH: name the config's key
                    raise type(e)(f"attention {cfg.attention!r}: {e}") from e
            self.rows: list[dict] = []
            self._pending = None  # (loss sum, steps, time) of the steps after the last regular log row, at a stop
            self._empty_step = False  # whether the last train_step had no active value (mask_loss): no loss to log
            self._images_then = None  # the checkpoint's image_digests (None: not resumed, or written before them)
            self._logged = 0  # how many of self.rows log.csv holds (0: write it whole next time)
            self._log_held = False  # log.csv could not be written at the last try (write_log)
            # what can refuse the run in seconds comes first (a checkpoint of another config, a bad init file or
            # validation folder); the training images and their attention maps take minutes on a large set
            self.ckpt_path = os.path.join(out, "checkpoint.pt")
            if resume and os.path.exists(self.ckpt_path):
                self.load_checkpoint(self.ckpt_path)
            elif cfg.init:
                self.load_init(cfg.init)
            self.val_hr = None
            if validate:
                val = _data.load_source(cfg.data.val_source, cfg.data.val_crop,
                                        "the validation crop size data.val_crop", "data.val_source (validation crops, "
                                        "as val_every > 0; val_every: 0 skips them)")
                self.val_hr = _data.fixed_crops(val, cfg.data.val_crops, cfg.data.val_crop, seed=cfg.seed + 1)
            turns: list = []  # the training images' thumbnails, made once for both checks
            train_images = _data.load_source(cfg.data.source, cfg.data.crop, "the crop size data.crop", "data.source",
                                             vet=lambda items: held_out_lines(items, turns))
            if validate and os.path.realpath(cfg.data.val_source) != os.path.realpath(cfg.data.source):
                warn_of_shared(turns, val)  # (one folder for both is the config's own choice)
            self.images = _data.image_digests(train_images, cfg.data.source)
            change = self._images_then is not None and _data.digest_change(self._images_then, self.images)
            if change:  # a resume that cannot match the uninterrupted run
                warnings.warn(f"the training images differ from those {self.ckpt_path} was trained on ({change}): the "
                              f"run goes on with these", UserWarning, stacklevel=2)
            maps = whole_image_maps(self.extractor, train_images, cfg.data.scale) if cfg.loss.yoda else None
            self.train_images = _data.CropSampler(train_images, cfg.data.crop, cfg.data.flips, maps)
            os.makedirs(out, exist_ok=True)  # after the init is read: a bad one left the folders made
            self.ddp = None
            if self.ranks.world > 1:
                self.ddp = wrap_ddp(self.model, cfg.loss, self.device)

    def close(self) -> None:
        """Drop the DistributedDataParallel wrapper while its process group exists. Its reducer holds the group;
        freed after destroy_process_group (the Trainer outliving the group, or at interpreter exit) it aborted
        the process now and then ("terminate called without an active exception", exit -6) after a finished run.
        The trainer trains no more after this."""
        if self.ddp is not None:
            import gc

            self.ddp = None
            gc.collect()

    def _check_sizes_and_sampling(self, validate: bool) -> None:
        """Before the images are read: the training crop is a size the model takes, and validation (its crop,
        val_steps; if ``validate``) can sample, so that a bad setting is an error naming its config key, not a
        failure at step 1 or after the first val_every steps of training (which then saved nothing)."""
        from ..sampling.spec import make_spec

        cfg, adapter = self.cfg, self.sampling_model(self.ema)
        checks = [("data.crop", cfg.data.crop, None)]
        if validate:
            checks.append(("data.val_crop", cfg.data.val_crop, cfg.val_steps))
        unit, least = hr_grid(adapter)  # the crop sizes the model takes (its check_lr speaks of sampling's lr)
        for key, crop, steps in checks:
            if crop % unit or crop < least:
                raise ValueError(f"config {key}: the crop {crop} must be a multiple of {unit} (the scale and the "
                                 f"model's size multiple) and at least {least}")
            if steps is None:
                continue
            lr = torch.zeros(1, 3, crop // cfg.data.scale, crop // cfg.data.scale, device=self.device)
            try:
                make_spec(adapter, lr, steps=steps, sampler="ddim", lower_bound=cfg.loss.lower_bound, seed=cfg.seed,
                          progress=False)
            except (ValueError, TypeError) as e:  # (the crop is checked above: the steps it samples with)
                raise ValueError(f"config val_steps {steps} (validation with val_every {cfg.val_every}): {e}") from None

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self, rank_rng: Optional[list] = None) -> dict:
        """``rank_rng``: every rank's rng.states() (DDP: each rank draws its own dropout masks)."""
        torch_rng, cuda_rng = self.rng.states()
        return {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(),
            # torch's own generators draw the dropout masks: a resumed run draws the masks of the steps it
            # resumes at, not those of step 1 again; under DDP each rank's (rank_rng)
            "torch_rng": torch_rng,
            "cuda_rng": cuda_rng,
            "rank_rng": rank_rng,
            "rows": list(self.rows),
            "pending": self._pending,
            "images": self.images,
            "loss_version": LOSS_VERSION,
            "init_sha256": self.init_sha256,
            "sampling_from_init": self.sampling_from_init,
            "upsampling": self.upsampling,
        }

    def save_checkpoint(self, path: Optional[str] = None) -> None:
        """Every rank calls it (under DDP each sends rank 0 its generators' states); rank 0 writes."""
        rank_rng = gather_to_main(self.rng.states(), self.ranks) if self.ranks.world > 1 else None
        if not self.ranks.main:  # every rank holds the same weights; rank 0 writes them
            return
        buf = io.BytesIO()  # in memory first: torch.save reports a full disk as a RuntimeError of its own
        torch.save(self.state_dict(rank_rng), buf)
        atomic_write_bytes(path or self.ckpt_path, buf.getbuffer())

    def load_checkpoint(self, path: str) -> None:
        def unusable(why: str) -> ValueError:
            return ValueError(f"checkpoint {path} cannot be resumed: {why}; delete it to start this run afresh, or "
                              f"train into another --out")

        why = zip_refusal(path)  # a TorchScript archive, or a compressed zip that could unpack to gigabytes
        if why:
            raise unusable(why)
        try:
            st = torch.load(path, map_location=self.device, weights_only=True)  # tensors and plain data only
        except Exception as e:  # corrupt / truncated file, or one that holds other objects than tensors
            foreign = not_torch(path)
            raise unusable(f"it is not a PyTorch checkpoint ({foreign})" if foreign else load_failure(e)) from None
        if not isinstance(st, dict) or not all(k in st for k in ("config", "model", "ema", "opt", "gen", "step")):
            raise unusable("it is not a yoda training checkpoint (no config, model, optimiser and step)")
        # the checkpoint's config as its JSON reads back (one written before a tuple in the model became a list)
        mine, theirs = _resume_view(self.cfg.to_dict()), _resume_view(_json_form(st["config"], "config"))
        if mine != theirs:
            def said(v) -> str:  # a value as the message shows it (a model's dict cut short)
                text = "absent" if v is None else repr(v)
                return text if len(text) <= 60 else text[:57] + "..."

            diff = ", ".join(f"{k}: {said(theirs.get(k))} there, {said(mine.get(k))} now"
                             for k in sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)))
            folder = " (the training images: yoda train --data-dir names them)" if "data.source" in diff else ""
            raise ValueError(f"checkpoint {path} was written with a different config (differs in: {diff}){folder}; "
                             f"resume with the run's own config.json, or train into another --out")
        try:
            self.model.load_state_dict(st["model"])
            self.ema.load_state_dict(st["ema"])
            self.opt.load_state_dict(st["opt"])
            self.gen.set_state(st["gen"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise unusable(f"its tensors do not fit this config's model ({first_line(str(e))})") \
                from None
        # torch's generators as the run left them, to draw the dropout masks of the steps it resumes at (absent in
        # checkpoints written before they were saved); under DDP this rank's own, if the run had as many ranks
        rank_rng, step, rows = st.get("rank_rng"), st["step"], st.get("rows")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:  # -5 resumed and trained 8 steps
            raise unusable(f"its step {step!r} is not a count of steps")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in rows):
            raise unusable("its log rows are not rows of steps")
        try:  # (a tensor of the wrong dtype: torch's "RNG state must be a torch.ByteTensor", as an internal error)
            if self.ranks.world == 1:
                self.rng.set_states(st.get("torch_rng"), st.get("cuda_rng"))
            elif rank_rng is not None and len(rank_rng) == self.ranks.world:
                self.rng.set_states(*rank_rng[self.ranks.rank])
            self._set_upsampling(st.get("upsampling", "torch"))
        except (RuntimeError, ValueError, TypeError) as e:
            raise unusable(first_line(str(e))) from None
        self.step = step
        if jump := rate_jump(self.cfg, st["config"], self.step):
            warnings.warn(jump, UserWarning, stacklevel=2)
        then = st["config"].get("init", "")  # what the run started from, not --init now
        if self.cfg.init and not (then and (os.path.realpath(then) == os.path.realpath(self.cfg.init) or (  # moved
                os.path.isfile(self.cfg.init) and file_sha256(self.cfg.init) == st.get("init_sha256")))):
            raise unusable(f"it started from {then or 'a random init'}, not from init (--init) {self.cfg.init}")
        self.cfg = self.cfg.replace(init=then)
        then_sampling = _json_form(st["config"].get("sampling", {}), "sampling")
        if st.get("sampling_from_init") and self.cfg.sampling in ({}, then_sampling):  # its init file's, named by no
            self._inherit_sampling(then_sampling)  # config, or by config.json (which records it): still the file's
        self.init_sha256 = st.get("init_sha256")  # that file as it was then (None: not recorded)
        self.rows = [r for r in rows if r["step"] <= self.step]
        self._pending, self._images_then = st.get("pending"), st.get("images")
        if self._pending and self.rows and self.rows[-1]["step"] == self.step:  # the stop's row: the next regular
            self.rows.pop()  # row averages from the last regular one on, as an uninterrupted run's does
        self._logged = 0  # log.csv may hold rows past the checkpoint: rewritten whole
        if self.cfg.loss.yoda and st.get("loss_version", 1) < LOSS_VERSION:
            warnings.warn(f"checkpoint {path} was written by a yoda that made the YODA masks of each training crop "
                          "(and, before the eighth pass, took other targets at inactive pixels with mask_input on and "
                          "mask_loss off); its remaining steps train with the crops of the whole images' masks "
                          "(CHANGELOG.md, ninth pass)", UserWarning, stacklevel=2)

    def load_init(self, path: str) -> None:
        """Start from the weights of the yoda model file ``path`` (model and EMA; the optimiser, the step and the
        data stream start afresh): fine-tuning (finetune.read_init says what must fit, and refuses what does not).
        Its up(lr) is the run's; its sha256 is kept for the record (init_sha256)."""
        src, self.init_sha256 = read_init(path, self.cfg, model_card(self.cfg, self.schedule))
        load_state_dict_checked(self.model, src.state_dict(), f"init (--init) {path}",
                                " (the config's model must be the file's)")
        self.ema.load_state_dict(self.model.state_dict())
        self._set_upsampling(getattr(src, "upsampling", "torch"))
        if not self.cfg.sampling and src.card.sampling:  # a config naming no sampling keeps the file's
            self._inherit_sampling(src.card.sampling)

    def _set_upsampling(self, method: str) -> None:
        """up(lr) of the run and its modules (the export records it): torch's, or an init file's own."""
        from ..upsampling import METHODS

        if method not in METHODS:  # a checkpoint's: refused here, not at the first step
            raise ValueError(f"its upsampling {method!r} is not one of {METHODS}")
        self.upsampling = self.model.upsampling = self.ema.upsampling = method

    def _inherit_sampling(self, sampling: dict) -> None:
        """cfg.sampling (how the exported model samples by default) taken from the init file, on the config and both
        modules' cards, and marked so (sampling_from_init: a resume keeps it). Not its masks' lower bound: this
        run's own masks set that (model_card)."""
        self.cfg = self.cfg.replace(sampling={k: v for k, v in sampling.items() if k != "lower_bound"})
        self.model.card = self.ema.card = model_card(self.cfg, self.schedule)
        self.sampling_from_init = True

    # -- one step ------------------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        """The learning rate at ``step`` (TrainConfig.learning_rate)."""
        return self.cfg.learning_rate(step)

    def train_step(self) -> float:
        """One optimizer step on the global batch; returns its loss (the mean over the ranks' shares). Its dropout
        draws from the trainer's generators, in run() or a loop of one's own. Gradients on whatever the caller set
        (a notebook in torch.no_grad() / inference_mode got "element 0 of tensors does not require grad")."""
        with self.rng.use(), torch.inference_mode(False), torch.enable_grad(), cpu_default_device():
            return self._train_step()  # (a caller's default device took its new tensors)

    def _train_step(self) -> float:
        cfg, ranks = self.cfg, self.ranks
        # the whole global batch is drawn, in one process's order (crops, then diffusion_loss's steps, levels and
        # noise); this rank keeps its share, so N ranks train on exactly the samples one process trains on
        share = ranks.shard(cfg.batch)
        A = None
        if cfg.loss.yoda:  # the crops of the whole images' maps: the masks sampling makes of those images
            hr, A = self.train_images.sample_with_maps(cfg.batch, self.gen)
            A = A[share].to(self.device)
        else:
            hr = self.train_images.sample(cfg.batch, self.gen)
        hr = hr[share].to(self.device)
        idx, sqrt_ab = draw_noise_level(self.ab, cfg.batch, cfg.loss, self.gen)
        noise = torch.randn((cfg.batch, *hr.shape[1:]), generator=self.gen, dtype=torch.float32)
        lr_img = _data.make_lr(hr, cfg.data.scale)
        x0, c, up = space_tensors(hr, lr_img, cfg.loss, cfg.data.scale, bool(cfg.model.get("clip_input", True)),
                                  self.upsampling)
        for g in self.opt.param_groups:
            g["lr"] = self.learning_rate(self.step)
        self.model.train()
        counts = []  # the global batch's count of active values (mask_loss)

        def reduce_count(n: torch.Tensor) -> torch.Tensor:  # what the masked mean of this rank's share divides by
            total = n if self.ddp is None else all_reduce_sum(n, ranks)
            counts.append(total)
            return total.clamp_min(1.0) / ranks.world

        if self.ddp is None:
            denoise = make_denoiser(self.model, lr_img, up, cfg.loss)
        else:
            denoise = lambda x_t, i, s: self.ddp(x_t, i, s, lr_img, up)  # noqa: E731
        out = diffusion_loss(denoise, x0, c, A, self.ab, cfg.loss, idx=idx[share], sqrt_ab=sqrt_ab[share],
                             noise=noise[share], reduce_count=reduce_count)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()  # under DDP: the ranks' mean gradient, that of the global batch's loss
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        # a global batch with no active value (mask_loss; small batches, late steps) has a zero loss and zero
        # gradients, which AdamW's momentum and the EMA would still move the weights by: the step counts, nothing
        # moves (every rank agrees: the count is global)
        self._empty_step = bool(counts and float(counts[0]) == 0.0)  # (run leaves its zero out of the logged loss)
        if not self._empty_step:
            self.opt.step()
            self._update_ema()
        self.step += 1
        return float(all_reduce_sum(out.loss.detach(), ranks)) / ranks.world

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up of the decay (1 + n) / (10 + n) so that early EMA weights are not dominated by the init
        d = min(self.cfg.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # -- validation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """Mean PSNR (dB, 8-bit) of DDIM samples from the EMA model on the fixed held-out crops, plain and with
        YODA masks (cfg.attention, lower bound of the loss config; the extractor is built whenever there are
        validation crops)."""
        from ..sampling import sample

        hr = self.val_hr.to(self.device)
        lr_img = _data.make_lr(hr, self.cfg.data.scale)
        model = self.sampling_model(self.ema)
        out = {}
        modes = [("val_psnr_plain", None)] + ([("val_psnr_yoda", self.cfg.attention)] if self.extractor else [])
        for key, attn in modes:
            with lr_from_images():  # make_lr's, of 8-bit HR crops
                sr = sample(model, lr_img, attention=attn, steps=self.cfg.val_steps, sampler="ddim",
                            lower_bound=self.cfg.loss.lower_bound, seed=self.cfg.seed, progress=False)
            out[key] = float(psnr_u8(sr, hr).mean())
        return out

    def sampling_model(self, module: torch.nn.Module):
        """The adapter yoda.sample runs for ``module`` trained with this config."""
        return sampling_adapter(module, self.cfg, self.schedule)

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, steps: Optional[int] = None, max_seconds: Optional[float] = None) -> dict:
        """Train up to ``steps`` (default cfg.steps) total steps, or until max_seconds of wall time have
        passed; checkpoint, write the log and the EMA weights. Returns a summary dict; its "stopped_by" is a stop
        signal's name, "--minutes" where max_seconds ran out (the CLI's name for it), or None."""
        from tqdm import tqdm

        cfg = self.cfg
        check_run_args(steps, max_seconds)
        total = cfg.steps if steps is None else int(steps)
        if cfg.decay_from and total > cfg.steps:  # (the steps past it trained at a learning rate of 0, unsaid)
            raise ValueError(f"steps {total} is past the config's steps ({cfg.steps}), where its learning rate has "
                             f"decayed to 0 (decay_from {cfg.decay_from}): give the config steps={total} instead "
                             f"(cfg.replace(steps={total}), or yoda train --steps {total})")
        if total > cfg.steps:  # the run's config says so (config.json, the export): it read cfg.steps, which its
            self.cfg = cfg = cfg.replace(steps=total)  # own checkpoint is past, and could not resume it
        t0 = time.perf_counter()
        acc, n, t_base = self._pending or (0.0, 0, float(self.rows[-1]["time"]) if self.rows else 0.0)
        self._pending = None  # the time column is cumulative over resumes
        last_row = self.rows[-1] if self.rows and self.rows[-1]["step"] == self.step else None
        if last_row and self.val_hr is not None and self.step % cfg.val_every == 0 and last_row["val_psnr_plain"] == "":
            last_row.update(self.validate() if self.ranks.main else {})  # a signal's stop skipped it (below)
            self.write_log()  # (also when no step is left to write it)
            if self.on_row is not None and self.ranks.main:
                self.on_row(last_row, total, self.step >= total)
        # under a time budget the bar counts steps and the time left (1,000,000 steps: a 79-hour ETA to a 24-s run)
        bar = tqdm(total=None if max_seconds is not None else total, initial=self.step, desc=cfg.name, unit="step",
                   disable=None if self.progress is None else not self.progress)
        post: dict = {}  # the bar's loss, and with max_seconds the time left
        if self.ranks.main:  # the run's folder says what it is from the start (a killed or diverged run had none)
            atomic_write_text(os.path.join(self.out, "config.json"), self.cfg.to_json() + "\n")
        (interrupted, old_handlers), stop = stop_on_interrupt(), None
        bench = torch.backends.cudnn.benchmark  # for the run only (a fixed crop size: cuDNN's fastest convolutions)
        torch.backends.cudnn.benchmark = bench or self.device.type == "cuda"
        try:
            with self.rng.use():  # dropout draws from the trainer's generators, not the caller's
                while self.step < total:
                    loss = self.train_step()
                    if not math.isfinite(loss):
                        raise NonFiniteError(self._diverged(loss))
                    if not self._empty_step:  # a step with no active value has no loss to log (its 0 read as a
                        acc, n = acc + loss, n + 1  # perfect step; a row of them alone logs nan, a gap in the plot)
                    if max_seconds is not None:
                        left = max(0.0, max_seconds - (time.perf_counter() - t0))
                        post["budget left"] = tqdm.format_interval(left)
                        bar.set_postfix(post, refresh=False)
                    bar.update(1)
                    last = self.step == total
                    stop = self._stop_reason(interrupted, max_seconds is not None and
                                             time.perf_counter() - t0 > max_seconds)
                    val_due = self.val_hr is not None and (self.step % cfg.val_every == 0 or last)
                    regular = (cfg.log_every and self.step % cfg.log_every == 0) or last or val_due
                    # a signal's stop saves at once, unvalidated (a job's grace period); --minutes validates its end
                    timed_out = stop == "--minutes"
                    val_now = self.val_hr is not None and (timed_out or val_due and (last or stop is None))
                    if regular or stop is not None:
                        row = {"step": self.step, "loss": acc / n if n else math.nan,
                               "lr": self.learning_rate(self.step - 1),
                               "time": t_base + time.perf_counter() - t0, "val_psnr_plain": "", "val_psnr_yoda": ""}
                        if val_now and self.ranks.main:
                            row.update(self.validate())  # the EMA is the same on every rank: rank 0 validates
                            row["time"] = t_base + time.perf_counter() - t0  # the row's own validation too
                        if val_now and stop is None:  # a signal during validation stops here (it trained a step more)
                            stop = self._stop_reason(interrupted, False)
                        self.rows.append(row)
                        self.write_log()
                        post["loss"] = f"{row['loss']:.4f}"
                        if row["val_psnr_plain"] != "":  # (the bar showed the loss only)
                            post["val"] = f"{row['val_psnr_plain']:.2f} dB"
                        bar.set_postfix(post)
                        if not regular:  # a stop's row: a resume replaces it (load_checkpoint)
                            self._pending = (acc, n, row["time"])
                        acc, n = 0.0, 0
                    if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or last or stop is not None:
                        self.save_checkpoint()
                    if (regular or stop is not None) and self.on_row is not None and self.ranks.main:
                        self.on_row(row, total, last or stop is not None)  # after the save: a failing one loses no step
                    if stop is not None:
                        break
            bar.close()
            if self.ranks.main:  # with the stop handlers still set: a Ctrl-C now does not cut the export short
                self.export(os.path.join(self.out, self.weights_name))
        finally:
            bar.close()
            torch.backends.cudnn.benchmark = bench
            for sig, old in old_handlers.items():
                signal.signal(sig, old)
        barrier(self.ranks, self.device)  # every rank returns once rank 0's files are written
        if self.step >= total:  # finished: a signal during the last step stopped nothing
            stop = None
        sig = next((int(s) for s, name in STOP_SIGNALS.items() if name == stop), None)
        return {"steps": self.step, "seconds": time.perf_counter() - t0, "total": total, "stopped_by": stop,
                "interrupted": sig is not None, "signal": sig}

    def _diverged(self, loss: float) -> str:
        """What to do when the loss is NaN / Inf: the same config diverges again from the run's checkpoint."""
        again = (f"; {self.ckpt_path}, from before it, would resume into the same divergence: train into another "
                 f"--out (or delete it)" if os.path.isfile(self.ckpt_path) else "")
        clip = f"a smaller grad_clip (now {self.cfg.grad_clip:g})" if self.cfg.grad_clip else "grad_clip > 0"
        return (f"loss became {loss} at step {self.step}: training diverged; try a lower lr (now {self.cfg.lr:g}), "
                f"a longer warmup or {clip}{again}")

    def _stop_reason(self, signals: list, timed_out: bool) -> Optional[str]:
        """Why the run stops after this step, the same on every rank (the ranks stop together, and a job manager
        may signal one rank only): the name of a stop signal some rank got (STOP_SIGNALS), else "--minutes" when
        some rank's time ran out, else None. One all-reduce of a vote per reason."""
        reasons = list(STOP_SIGNALS.values()) + ["--minutes"]
        votes = [float(bool(signals) and signals[0] == s) for s in STOP_SIGNALS] + [float(timed_out)]
        votes = all_reduce_sum(torch.tensor(votes, device=self.device), self.ranks).tolist()
        return next((r for r, v in zip(reasons, votes) if v > 0), None)

    def export(self, path: str) -> None:
        """The EMA weights in the "yoda" format (yoda.load("yoda", path)), with the TrainConfig in "extra"."""
        from ..models.yoda_format import save_model

        module = copy.deepcopy(self.ema).cpu()
        module.card = model_card(self.cfg, self.schedule)
        save_model(module, path, extra={"train_config": self.cfg.to_dict(), "steps": self.step})

    def write_log(self) -> None:
        """log.csv: written whole (atomically) the first time and after a resume, then only the new rows appended (and
        fsynced): rewriting every row at every log step cost time growing with the run (0.4 s a write, 50,000 rows)."""
        if not self.ranks.main:
            return
        path = os.path.join(self.out, "log.csv")
        whole = not (self._logged and os.path.isfile(path))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")  # not csv's \r\n: awk read a \r
        if whole:
            w.writeheader()
        for r in self.rows if whole else self.rows[self._logged:]:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        try:
            if whole:
                atomic_write_text(path, buf.getvalue(), newline="")
            else:
                append_whole(path, buf.getvalue().encode("utf-8"))  # whole rows or none (a full disk)
        except PermissionError as e:  # Windows: open in Excel (a deny-write lock); the run went down with it
            if not self._log_held:
                warnings.warn(f"{path} cannot be written now ({e.strerror or e}: open in another program?): its "
                              f"rows are kept and written at the next log step that can", UserWarning, stacklevel=2)
            self._log_held = True
            return
        self._logged, self._log_held = len(self.rows), False
