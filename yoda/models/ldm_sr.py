"""LDM-SR (Rombach et al. 2022's latent super-resolution; diffusers' ``LDMSuperResolutionPipeline``, e.g.
CompVis/ldm-super-resolution-4x-openimages) behind the YODA sampler.

What the pipeline does, and what this adapter does with the same modules:

    z_t  (B, C', h, w)                       the latent, at the LR's own size (the VQ model's f = 4 = the scale)
    out  = unet(cat(z_t, lr), t)             lr: the LR pixels in [-1, 1], not noised; a diffusers UNet2DModel
    SR   = vqvae.decode(z_0), clamped        (decode quantises the latent to the codebook)

YODA holds the latent pixels not refined yet at c = vqvae.encode(up(lr)).latents (torch's bicubic x f, before
quantisation), noised to the next step's level, and max-pools the HR attention map to the latent grid
(LatentAdapter's rule). The pipeline cuts a PIL input's sides down to multiples of 32 (Lanczos) and takes a tensor
as it is (sides that are not multiples of the UNet's 2 ** downsamplings fail in it); here the LR is padded
(replicate) to that multiple and the image cropped back: the pipeline's image of the padded LR, cropped. With
lower_bound >= 1, the same latents and sampler="ddim" (the pipeline's DDIM, eta 0, 100 steps: what a call naming
none takes) this gives the pipeline's latents and image (tests/test_ldm_sr.py). diffusers exports the pipeline only
where transformers is installed (not a dependency of yoda); the tests import its module directly.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Tuple

import torch

from ..adapters import Prepared, pipeline_hint
from .latent import (LatentAdapter, clip_sample_of, lr_on_grid, overridden_denoise, sampling_from_diffusers,
                     schedule_from_diffusers, scheduler_config_dict)

__all__ = ["LDMSRAdapter", "LDMSRCond"]

PIPELINE_STEPS = 100  # LDMSuperResolutionPipeline's num_inference_steps


class LDMSRCond(NamedTuple):
    image: torch.Tensor  # the LR pixels, (B, 3, h', w') on the latent grid (padded)
    size: Tuple[int, int]  # (H, W) of the HR image before padding


class LDMSRAdapter(LatentAdapter):
    """``LDMSRAdapter(unet, vqvae, scheduler_config)``: the pipeline's ``unet`` (diffusers UNet2DModel with
    in_channels = latent channels + 3), ``vqvae`` (VQModel) and ``scheduler`` (or its config)."""

    def __init__(self, unet: Any, vqvae: Any, scheduler_config: Any, *, pool: str = "max"):
        from diffusers import UNet2DModel, VQModel  # optional dependency, imported on use

        if not isinstance(unet, UNet2DModel):
            hint = (" (the SD x4 upscaler's: yoda.models.SDUpscalerAdapter)"
                    if type(unet).__name__ == "UNet2DConditionModel" else pipeline_hint(unet))
            raise TypeError(f"unet must be a diffusers UNet2DModel, got {type(unet).__name__}{hint}")
        if not isinstance(vqvae, VQModel):
            hint = " (a KL autoencoder's latent model: yoda.models.from_diffusers)" * (
                type(vqvae).__name__ == "AutoencoderKL")
            raise TypeError(f"vqvae must be a diffusers VQModel, got {type(vqvae).__name__}{hint}")
        if int(vqvae.config.in_channels) != 3 or int(vqvae.config.out_channels) != 3:
            raise ValueError(f"vqvae must encode and decode RGB images (in_channels = out_channels = 3), got "
                             f"{vqvae.config.in_channels} / {vqvae.config.out_channels}")
        C = int(vqvae.config.vq_embed_dim or vqvae.config.latent_channels)  # the latent's channels (encode's)
        if int(unet.config.in_channels) != C + 3 or int(unet.config.out_channels) != C:
            raise ValueError(f"unet: in_channels must be the vqvae's latent channels {C} + 3 = {C + 3} (cat(z_t, LR "
                             f"pixels); vqvae.config's vq_embed_dim, else latent_channels) and out_channels {C}, got "
                             f"{unet.config.in_channels} / {unet.config.out_channels}")
        config = scheduler_config_dict(scheduler_config)
        sched, pred = schedule_from_diffusers(config)
        f = 2 ** (len(vqvae.config.block_out_channels) - 1)
        m = 2 ** (len(unet.config.block_out_channels) - 1)  # UNet2DModel takes sides of multiples of its downsamplings

        self.vqvae = vqvae
        super().__init__(self._encode_vq, self._decode_vq, overridden_denoise, sched, prediction=pred, scale=f,
                         latent_factor=f, pool=pool, clip_x0=clip_sample_of(config), latent_multiple=m,
                         modules=(unet, vqvae), sampling=sampling_from_diffusers(config, PIPELINE_STEPS))
        self.net = unet  # the denoiser call, which yoda.sampling.speed may wrap

    def _encode_vq(self, img: torch.Tensor) -> torch.Tensor:  # (methods, not closures: the adapter pickles)
        return self.vqvae.encode(img.to(self.vqvae.dtype)).latents.to(img.dtype)

    def _decode_vq(self, z: torch.Tensor) -> torch.Tensor:
        return self.vqvae.decode(z.to(self.vqvae.dtype)).sample.to(z.dtype)

    def prepare(self, lr: torch.Tensor) -> Prepared:
        latent = super().prepare(lr)  # c = encode(padded up(lr)), the HR size
        return Prepared(c=latent.c, cond=LDMSRCond(lr_on_grid(lr, latent.c.shape[-2:]), latent.cond.size))

    def crop_cond(self, cond: LDMSRCond, ys: slice, xs: slice) -> LDMSRCond:
        return cond._replace(image=cond.image[..., ys, xs])

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, ab_t: Any, cond: LDMSRCond) -> torch.Tensor:
        dt = self.net.dtype
        return self.net(torch.cat([x_t, cond.image.to(x_t.dtype)], dim=1).to(dt), t).sample.to(x_t.dtype)
