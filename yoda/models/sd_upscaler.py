"""The Stable Diffusion x4 upscaler (diffusers' ``StableDiffusionUpscalePipeline``) behind the YODA sampler.

What the pipeline does, and what this adapter does with the same modules:

    image_t = low_res_scheduler.add_noise(lr, n, noise_level)     the LR pixels (in [-1, 1]) noised at noise_level
    z_t     (B, C', h, w)                                          the latent, at the LR's own size
    out     = unet(cat(z_t, image_t), t, encoder_hidden_states=prompt embeddings, class_labels=noise_level)
              guided: out_neg + guidance_scale * (out - out_neg), out_neg with the negative prompt's embeddings
    SR      = vae.decode(z_0 / scaling_factor)                     f x the LR (f = 4: the VAE's downsampling)

YODA holds the latent pixels not refined yet at c = the VAE encoding of up(lr) (torch's bicubic x f;
latent.VAECodec: the mean of the latent distribution, times scaling_factor), noised to the next step's level, and
max-pools the HR attention map to the latent grid (LatentAdapter's rule). The prompts are given as embeddings (diffusers' ``prompt_embeds``
/ ``negative_prompt_embeds``: yoda has no text encoder); the LR noise n is drawn from ``noise_seed`` on the CPU,
as the pipeline draws it from a CPU generator of that seed (the LR is not padded: the UNet takes any size).
Guidance runs when the scale is above 1, as in the pipeline. An fp16 VAE with force_upcast runs in float32 (the
pipeline's upcast). With lower_bound >= 1, the same latents, sampler="ddim" and spacing="sd_leading" (the
pipeline's DDIM config: leading, steps_offset 1, set_alpha_to_one False; what a call naming none takes, with the
pipeline's 75 steps) this gives the pipeline's latents and image (tests/test_sd_upscaler.py).
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple, Optional, Tuple

import torch

from ..adapters import Prepared, check_cfg_scale, guided_call, pipeline_hint
from ..masks import as_int
from .latent import (LatentAdapter, VAECodec, clip_sample_of, lr_on_grid, overridden_denoise, sampling_from_diffusers,
                     schedule_from_diffusers, scheduler_config_dict)

__all__ = ["SDUpscalerAdapter", "UpscalerCond"]

PIPELINE_STEPS = 75  # StableDiffusionUpscalePipeline's num_inference_steps


class UpscalerCond(NamedTuple):
    image: torch.Tensor  # the noised LR pixels, (B, 3, h', w') on the latent grid
    level: torch.Tensor  # (B,) int64 noise_level, the UNet's class label
    emb: torch.Tensor  # (B, L, D) prompt embeddings
    neg: Optional[torch.Tensor]  # (B, L, D) negative prompt embeddings, None without guidance
    size: Tuple[int, int]  # (H, W) of the HR image before padding


class SDUpscalerAdapter(LatentAdapter):
    """``SDUpscalerAdapter(unet, vae, scheduler_config, low_res_scheduler_config, prompt_embeds, ...)``.

    unet: diffusers UNet2DConditionModel with in_channels = latent channels + 3 and a noise-level class embedding;
    vae: AutoencoderKL; scheduler_config / low_res_scheduler_config: the pipeline's scheduler and low_res_scheduler
    (or their configs); prompt_embeds: (1 or B, L, D); negative_prompt_embeds: the same shape, needed when
    guidance_scale != 1 (the pipeline's default 9.0); noise_level: the pipeline's (default 20, below the UNet's
    class count); noise_seed: the CPU generator seed of the LR noise, drawn for the whole batch at once as the
    pipeline draws it (so even image 0 of a batch differs from that image alone where 3 h w is no multiple of 16:
    torch's CPU randn fills its last 16 values another way; 2e-3 after 3 steps in a review). yoda.sample(cfg_scale=w)
    changes the scale.
    """

    supports_cfg = True

    def __init__(self, unet: Any, vae: Any, scheduler_config: Any, low_res_scheduler_config: Any,
                 prompt_embeds: torch.Tensor, negative_prompt_embeds: Optional[torch.Tensor] = None, *,
                 guidance_scale: float = 9.0, noise_level: int = 20, noise_seed: int = 0, max_noise_level: int = 350,
                 pool: str = "max"):
        from diffusers import AutoencoderKL, UNet2DConditionModel  # optional dependency, imported on use

        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f"unet must be a diffusers UNet2DConditionModel, got {type(unet).__name__}"
                            f"{pipeline_hint(unet)}")
        if not isinstance(vae, AutoencoderKL):
            raise TypeError(f"vae must be a diffusers AutoencoderKL, got {type(vae).__name__}")
        C = int(vae.config.latent_channels)
        if int(unet.config.in_channels) != C + 3 or int(unet.config.out_channels) != C:
            raise ValueError(f"unet: in_channels must be latent_channels + 3 = {C + 3} (cat(z_t, noised LR pixels)) "
                             f"and out_channels {C}, got {unet.config.in_channels} / {unet.config.out_channels}")
        if not unet.config.num_class_embeds:
            raise ValueError("unet has no noise-level class embedding (num_class_embeds is None): the x4 upscaler's "
                             "UNet takes noise_level as its class label")
        top = min(int(max_noise_level), int(unet.config.num_class_embeds) - 1)
        noise_level = as_int(noise_level, "noise_level")  # numpy / 0-d tensor ints too, as seeds
        if not 0 <= noise_level <= top:
            raise ValueError(f"noise_level must be an int in [0, {top}] (the pipeline's max_noise_level and the "
                             f"UNet's noise-level classes), got {noise_level!r}")
        config = scheduler_config_dict(scheduler_config)
        sched, pred = schedule_from_diffusers(config)
        low, low_pred = schedule_from_diffusers(scheduler_config_dict(low_res_scheduler_config,
                                                                      "low_res_scheduler_config"))
        if pred == "eps" and low_pred != "eps":  # the x4 upscaler samples v; its low-res DDPMScheduler is eps
            raise ValueError(f"scheduler_config predicts eps and low_res_scheduler_config {low_pred}: are the two "
                             f"swapped? (the pipeline's scheduler, then its low_res_scheduler)")
        if noise_level >= low.T:
            raise ValueError(f"noise_level {noise_level} must be below the low-res scheduler's T = {low.T} "
                             f"(low_res_scheduler_config: the pipeline's DDPMScheduler, T = 1000, not its sampler's)")
        emb, neg = prompt_embeds, negative_prompt_embeds
        if isinstance(emb, tuple):  # encode_prompt's (prompt_embeds, negative_prompt_embeds) given whole
            raise ValueError("prompt_embeds must be a (1 or B, L, D) tensor, got a tuple: unpack encode_prompt's "
                             "pair, emb, neg = pipe.encode_prompt(...), and pass emb, neg")
        if not isinstance(emb, torch.Tensor) or emb.dim() != 3:
            raise ValueError(f"prompt_embeds must be a (1 or B, L, D) tensor, got {getattr(emb, 'shape', type(emb))}")
        # the text encoder's width (a UNet with encoder_hid_dim projects it), checked where it is one number: it failed
        # at the first UNet call, after the VAE encode
        width = getattr(unet.config, "encoder_hid_dim", None) or unet.config.cross_attention_dim
        if (isinstance(width, int) and emb.shape[-1] != width) or not emb.is_floating_point():
            raise ValueError(f"prompt_embeds must be floating with D = {width} (the UNet's cross_attention_dim: "
                             f"the text encoder's width), got {emb.dtype} of shape {tuple(emb.shape)}")
        if neg is not None and (not isinstance(neg, torch.Tensor) or neg.shape != emb.shape):
            raise ValueError(f"negative_prompt_embeds must have prompt_embeds' shape {tuple(emb.shape)}, got "
                             f"{getattr(neg, 'shape', type(neg).__name__)}")
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        codec = VAECodec(vae)
        super().__init__(codec.encode, codec.decode, overridden_denoise, sched, prediction=pred, scale=f,
                         latent_factor=f, pool=pool, clip_x0=clip_sample_of(config),
                         modules=(unet, vae), sampling=sampling_from_diffusers(config, PIPELINE_STEPS))
        self.net = unet  # the denoiser call, which yoda.sampling.speed may wrap
        ab = low.alphas_cumprod.float()[noise_level]  # diffusers' add_noise: float32 alphas_cumprod
        self.low_res = (float(ab ** 0.5), float((1 - ab) ** 0.5))
        self.emb, self.neg, self.noise_level = emb, neg, noise_level
        self.noise_seed = as_int(noise_seed, "noise_seed")  # int("a") said nothing of it; 1.7 became 1
        self.cfg_scale = check_cfg_scale(guidance_scale, "guidance_scale")
        self._check_guidance()

    @property
    def guided(self) -> bool:
        """The pipeline guides when its scale is above 1 (do_classifier_free_guidance)."""
        return self.cfg_scale > 1.0

    def _check_guidance(self) -> None:
        if self.guided and self.neg is None:
            raise ValueError(f"guidance scale {self.cfg_scale:g} needs negative_prompt_embeds (the pipeline encodes "
                             f"the negative prompt, '' by default, with its text encoder); or use a scale of 1")

    def with_cfg_scale(self, scale: float) -> "SDUpscalerAdapter":
        new = copy.copy(self)
        new.cfg_scale = check_cfg_scale(scale)
        new._check_guidance()
        return new

    def prepare(self, lr: torch.Tensor) -> Prepared:
        latent = super().prepare(lr)  # c = encode(padded up(lr)), the HR size
        B = lr.shape[0]
        lr_p = lr_on_grid(lr, latent.c.shape[-2:])
        n = torch.randn(lr_p.shape, generator=torch.Generator().manual_seed(self.noise_seed), dtype=torch.float32)
        a, s = self.low_res
        image = (a * lr_p.float() + s * n.to(lr.device)).to(lr.dtype)
        level = torch.full((B,), self.noise_level, dtype=torch.int64, device=lr.device)

        def per_image(e: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if e is None:
                return None
            if e.shape[0] not in (1, B):
                raise ValueError(f"prompt embeddings have batch {e.shape[0]}, lr has {B}: give 1 or {B}")
            return e.to(lr.device).expand(B, -1, -1)

        return Prepared(c=latent.c, cond=UpscalerCond(image, level, per_image(self.emb), per_image(self.neg),
                                                      latent.cond.size))

    def crop_cond(self, cond: UpscalerCond, ys: slice, xs: slice) -> UpscalerCond:
        return cond._replace(image=cond.image[..., ys, xs])

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, ab_t: Any, cond: UpscalerCond) -> torch.Tensor:
        net = self.net

        def call(x: torch.Tensor, tt: torch.Tensor, c: tuple) -> torch.Tensor:
            image, level, emb = c
            dt = net.dtype
            return net(torch.cat([x, image.to(x.dtype)], dim=1).to(dt), tt, encoder_hidden_states=emb.to(dt),
                       class_labels=level).sample.to(x.dtype)

        uncond = (cond.image, cond.level, cond.neg) if self.guided else None
        return guided_call(call, x_t, t, (cond.image, cond.level, cond.emb), uncond, self.cfg_scale)
