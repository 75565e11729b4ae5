"""yoda.models.LDMSRAdapter: LDM-SR's diffusers modules (random weights, tiny) give the latents of
LDMSuperResolutionPipeline's loop (written out below from its __call__) and the pipeline's own image (diffusers
exports the pipeline only where transformers is installed: its module is imported directly); YODA's masks and
windows run on it; bad modules are refused by name."""

import importlib

import pytest
import torch

import yoda

diffusers = pytest.importorskip("diffusers")
from yoda.models import LDMSRAdapter  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: two threads spin against each other

L, T, STEPS = 3, 20, 3


def modules(steps_offset=0):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=L + 3, out_channels=L, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=4).eval()
    vq = diffusers.VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                           up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16),
                           latent_channels=L, num_vq_embeddings=16, norm_num_groups=4, layers_per_block=1).eval()
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=0.0015,
                                    beta_end=0.0155, clip_sample=False, steps_offset=steps_offset)
    return unet, vq, sched


def pipeline_loop(unet, vq, sched, lr, latents):
    """LDMSuperResolutionPipeline.__call__ after its preprocessing: cat(latents, the LR pixels), DDIM eta 0,
    the VQ model's decode (quantised), clamped."""
    with torch.no_grad():
        sched.set_timesteps(STEPS)
        x = latents * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, lr], dim=1), t)
            x = sched.step(unet(inp, t).sample, t, x, eta=0.0).prev_sample
        return x, vq.decode(x).sample.clamp(-1.0, 1.0)


@pytest.mark.parametrize("steps_offset", [0, 1])
def test_the_pipelines_latents_and_image(steps_offset):
    unet, vq, sched = modules(steps_offset)
    g = torch.Generator().manual_seed(1)
    lr = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1  # (a multiple of the UNet's 2: no padding, as the pipeline)
    noise = [torch.randn(1, L, 8, 8, generator=g) for _ in range(STEPS + 1)]
    ref, ref_img = pipeline_loop(unet, vq, sched, lr, noise[0])
    ad = LDMSRAdapter(unet, vq, sched)
    assert (ad.scale, ad.prediction, ad.latent_factor, ad.latent_multiple) == (4, "eps", 4, 2)
    # the pipeline's DDIM at its 100 steps, as many as the spacing takes of T = 20
    assert dict(ad.sampling_defaults)["sampler"] == "ddim" and dict(ad.sampling_defaults)["steps"] == T - steps_offset
    states = []
    spacing = dict(ad.sampling_defaults)["spacing"]  # the scheduler's own timesteps (leading, its offset)
    sr = yoda.sample(ad, lr, attention=None, sampler="ddim", spacing=spacing, steps=STEPS, noise=noise,
                     progress=False, callback=lambda d: states.append(d["x"].clone()))
    assert sr.shape == (1, 3, 32, 32)
    assert (states[-1] - ref).abs().max() < 1e-5
    assert (sr - ref_img).abs().max() < 1e-5


def _pipeline_class():
    try:
        name = "diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution"
        return importlib.import_module(name).LDMSuperResolutionPipeline
    except (ImportError, AttributeError):
        return None


@pytest.mark.skipif(_pipeline_class() is None, reason="this diffusers has no LDMSuperResolutionPipeline")
@pytest.mark.parametrize("hw", [(8, 8), (9, 7)])
def test_the_pipelines_own_image(hw):
    """The pipeline itself, with the released model's scheduler config (scaled_linear 0.0015-0.0155, alpha-to-one,
    steps_offset 1) and a call naming nothing but the steps: an LR whose sides are no multiple of the UNet's 2 is the
    pipeline's image of the replicate-padded LR (a tensor with such sides fails in the pipeline), cropped."""
    unet, vq, _ = modules()
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.0015,
                                    beta_end=0.0155, clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    pipe = _pipeline_class()(vqvae=vq, unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(3)
    lr = torch.rand(2, 3, *hw, generator=g) * 2 - 1
    padded = torch.nn.functional.pad(lr, (0, hw[1] % 2, 0, hw[0] % 2), mode="replicate")
    z = torch.randn(2, L, *padded.shape[-2:], generator=torch.Generator().manual_seed(7))  # the pipeline's draw
    ref = pipe(image=padded, batch_size=2, num_inference_steps=STEPS, eta=0.0,
               generator=torch.Generator().manual_seed(7), output_type="np").images
    ad = LDMSRAdapter(unet, vq, sched)
    assert dict(ad.sampling_defaults) == {"sampler": "ddim", "steps": T - 1, "spacing": "leading_offset"}
    sr = yoda.sample(ad, lr, attention=None, steps=STEPS, noise=[z] + [torch.zeros_like(z)] * STEPS,
                     progress=False)
    got = (sr / 2 + 0.5).permute(0, 2, 3, 1).numpy()
    assert got.shape == (2, 4 * hw[0], 4 * hw[1], 3)
    assert abs(got - ref[:, :4 * hw[0], :4 * hw[1]]).max() < 1e-5


def test_yoda_masks_and_windows_on_ldm_sr(yoda_on_latent):
    unet, vq, sched = modules()
    g = torch.Generator().manual_seed(2)
    lr = torch.rand(2, 3, 9, 7, generator=g) * 2 - 1  # a batch, odd sides: padded to the UNet's multiple
    sr = yoda_on_latent(LDMSRAdapter(unet, vq, sched), lr, dict(sampler="ddim", steps=STEPS, seed=0, progress=False),
                        whole=10, tiled=(6, 2))  # 10: the padded grid
    assert sr.abs().max() <= 1


def test_bad_modules_are_named():
    unet, vq, sched = modules()
    with pytest.raises(TypeError, match=r"unet must be a diffusers UNet2DModel, got VQModel"):
        LDMSRAdapter(vq, vq, sched)
    with pytest.raises(TypeError, match=r"vqvae must be a diffusers VQModel, got UNet2DModel"):
        LDMSRAdapter(unet, unet, sched)
    vae = diffusers.AutoencoderKL(latent_channels=L, block_out_channels=(8,), norm_num_groups=4)
    with pytest.raises(TypeError, match=r"vqvae must be a diffusers VQModel, got AutoencoderKL"):
        LDMSRAdapter(unet, vae, sched)
    for wide in (diffusers.VQModel(latent_channels=4, block_out_channels=(8,), norm_num_groups=4),
                 diffusers.VQModel(latent_channels=3, vq_embed_dim=4, block_out_channels=(8,), norm_num_groups=4)):
        with pytest.raises(ValueError, match=r"in_channels must be the vqvae's latent channels 4 \+ 3 = 7 "):
            LDMSRAdapter(unet, wide, sched)  # (vq_embed_dim: what encode gives; the UNet failed at its first call)
    grey = diffusers.VQModel(in_channels=1, latent_channels=L, block_out_channels=(8,), norm_num_groups=4)
    with pytest.raises(ValueError, match=r"vqvae must encode and decode RGB images \(in_channels = out_channels"):
        LDMSRAdapter(unet, grey, sched)
    with pytest.raises(TypeError, match=r"got UNet2DConditionModel \(the SD x4 upscaler's: yoda\.models\.SDUpscaler"):
        LDMSRAdapter(diffusers.UNet2DConditionModel(
            block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4, cross_attention_dim=8,
            attention_head_dim=2), vq, sched)
    with pytest.raises(TypeError, match=r"vae must be a diffusers AutoencoderKL, got VQModel \(LDM-SR's UNet and VQ "):
        yoda.models.from_diffusers(unet, vq, sched)
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)  # a pipeline given whole, with a vqvae: LDM-SR's parts
    pipe.vqvae = vq
    with pytest.raises(TypeError, match=r"model is a DDPMPipeline \(a diffusers pipeline: yoda takes its parts, "
                                        r"yoda\.models\.LDMSRAdapter\(pipe\.unet, pipe\.vqvae, pipe\.scheduler\)\)"):
        yoda.sample(pipe, torch.zeros(1, 3, 8, 8))


def test_latent_adapters_pickle():
    """LDMSRAdapter and from_diffusers' adapter held their codecs and UNet call as closures: pickle (a spawned
    DataLoader worker, a process pool) failed with "Can't pickle local object"; the copy samples the same image."""
    import pickle

    unet, vq, sched = modules()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16),
                                  latent_channels=L, norm_num_groups=4, layers_per_block=1).eval()
    torch.manual_seed(0)
    cat_unet = diffusers.UNet2DModel(sample_size=8, in_channels=2 * L, out_channels=L, block_out_channels=(8, 16),
                                     layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                                     up_block_types=("UpBlock2D",) * 2, norm_num_groups=4).eval()
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    for ad in (LDMSRAdapter(unet, vq, sched), yoda.models.from_diffusers(cat_unet, vae, sched)):
        twin = pickle.loads(pickle.dumps(ad))
        kw = dict(attention="edge", lower_bound=0.3, sampler="ddim", steps=2, seed=0, progress=False)
        assert torch.equal(yoda.sample(twin, lr, **kw), yoda.sample(ad, lr, **kw)), type(ad).__name__
