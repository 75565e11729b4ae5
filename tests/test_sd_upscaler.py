"""yoda.models.SDUpscalerAdapter: the Stable Diffusion x4 upscaler's diffusers modules (random weights, tiny) give
the latents and the image of StableDiffusionUpscalePipeline's loop, written out below from its __call__ (the
pipeline itself needs transformers' text encoder, which is not a dependency), with and without guidance; YODA's
masks run on it; bad modules and arguments are refused by name."""

import numpy as np
import pytest
import torch

import yoda

diffusers = pytest.importorskip("diffusers")
from yoda.models import SDUpscalerAdapter  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: two threads spin against each other

L, T, STEPS, LEVEL = 4, 20, 3, 20  # 3 steps: T % steps != 0, where "ldm_uniform" would visit more


def modules():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=L + 3, out_channels=L, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4, cross_attention_dim=8, num_class_embeds=351, attention_head_dim=2).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16), latent_channels=L, norm_num_groups=4,
        layers_per_block=1, scaling_factor=0.08333).eval()
    # the upscaler's own configs: DDIM leading with steps_offset 1 and no alpha-to-one, v-prediction
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=1e-4,
                                    beta_end=0.02, prediction_type="v_prediction", clip_sample=False,
                                    set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    low = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=1e-4,
                                  beta_end=0.02)
    return unet, vae, sched, low


def pipeline_loop(unet, vae, sched, low, lr, latents, emb, neg, guidance, seed):
    """StableDiffusionUpscalePipeline.__call__ from the prompt embeddings on: LR noise from a CPU generator, the
    noise-level class label, guidance with the negative embeddings first, DDIM eta 0, decode."""
    cfg = guidance > 1.0
    with torch.no_grad():
        sched.set_timesteps(STEPS)
        level = torch.tensor([LEVEL], dtype=torch.long)
        n = torch.randn(lr.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        image = low.add_noise(lr, n, level)
        image = torch.cat([image] * 2) if cfg else image
        level = torch.cat([level] * image.shape[0])
        embeds = torch.cat([neg, emb]) if cfg else emb
        x = latents * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = torch.cat([x] * 2) if cfg else x
            inp = torch.cat([sched.scale_model_input(inp, t), image], dim=1)
            out = unet(inp, t, encoder_hidden_states=embeds, class_labels=level).sample
            if cfg:
                out_uncond, out_text = out.chunk(2)
                out = out_uncond + guidance * (out_text - out_uncond)
            x = sched.step(out, t, x, eta=0.0).prev_sample
        return x, vae.decode(x / vae.config.scaling_factor).sample


@pytest.mark.parametrize("guidance", [1.0, 9.0])
@pytest.mark.filterwarnings("ignore:scheduler_config names no scheduler class")  # (.config of schedulers made here)
def test_the_pipelines_latents_and_image(guidance):
    unet, vae, sched, low = modules()
    g = torch.Generator().manual_seed(1)
    lr = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    emb, neg = torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g)
    noise = [torch.randn(1, L, 8, 8, generator=g) for _ in range(STEPS + 1)]
    ref, ref_img = pipeline_loop(unet, vae, sched, low, lr, noise[0], emb, neg, guidance, seed=5)
    ad = SDUpscalerAdapter(unet, vae, sched.config, low.config, emb, neg, guidance_scale=guidance, noise_level=LEVEL,
                           noise_seed=5)
    assert (ad.scale, ad.prediction, ad.latent_factor, ad.device()) == (4, "v", 4, torch.device("cpu"))
    states = []
    sr = yoda.sample(ad, lr, attention=None, sampler="ddim", spacing="sd_leading", steps=STEPS, noise=noise,
                     progress=False, callback=lambda d: states.append(d["x"].clone()))
    assert sr.shape == (1, 3, 32, 32)
    assert (states[-1] - ref).abs().max() < 1e-5
    assert (sr - ref_img.clamp(-1, 1)).abs().max() < 1e-5
    if guidance != 1.0:  # yoda.sample(cfg_scale=) changes it; 1 is the unguided loop
        one = yoda.sample(ad, lr, attention=None, sampler="ddim", spacing="sd_leading", steps=STEPS, noise=noise,
                          progress=False, cfg_scale=1.0)
        _, ref1 = pipeline_loop(unet, vae, sched, low, lr, noise[0], emb, neg, 1.0, seed=5)
        assert (one - ref1.clamp(-1, 1)).abs().max() < 1e-5


def test_yoda_masks_and_windows_on_the_upscaler(yoda_on_latent):
    unet, vae, sched, low = modules()
    g = torch.Generator().manual_seed(2)
    lr = torch.rand(2, 3, 9, 7, generator=g) * 2 - 1  # a batch, odd sides (the UNet takes them unpadded)
    emb = torch.randn(1, 3, 8, generator=g)
    ad = SDUpscalerAdapter(unet, vae, sched, low, emb, guidance_scale=1.0)
    yoda_on_latent(ad, lr, dict(sampler="ddim", spacing="sd_leading", steps=STEPS, seed=0, progress=False),
                   whole=9, tiled=(4, 2))


def test_bad_modules_and_arguments_are_named():
    unet, vae, sched, low = modules()
    emb = torch.zeros(1, 3, 8)
    with pytest.raises(ValueError, match="guidance scale 9 needs negative_prompt_embeds"):
        SDUpscalerAdapter(unet, vae, sched, low, emb)
    ad = SDUpscalerAdapter(unet, vae, sched, low, emb, guidance_scale=1.0)
    with pytest.raises(ValueError, match="guidance scale 4 needs negative_prompt_embeds"):
        yoda.sample(ad, torch.zeros(1, 3, 8, 8), cfg_scale=4.0, steps=2, sampler="ddim", progress=False)
    with pytest.raises(ValueError, match=r"noise_level must be an int in \[0, 350\]"):
        SDUpscalerAdapter(unet, vae, sched, low, emb, guidance_scale=1.0, noise_level=351)
    with pytest.raises(ValueError, match=r"got a tuple: unpack encode_prompt's pair, emb, neg = pipe.encode_prompt"):
        SDUpscalerAdapter(unet, vae, sched, low, (emb, emb), guidance_scale=1.0)
    # a missing low-res scheduler was said of scheduler_config, which was fine
    with pytest.raises(TypeError, match=r"^low_res_scheduler_config must be a diffusers scheduler's config "
                                        r"\(scheduler.config\), the scheduler, its JSON file or a dict, got NoneType"):
        SDUpscalerAdapter(unet, vae, sched, None, emb, guidance_scale=1.0)
    # a pipeline given whole: told to pass its parts (as the model, it was "a plain callable: say what it predicts")
    pipe = diffusers.DDPMPipeline(unet=diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2), scheduler=diffusers.DDPMScheduler())
    hint = r"\(a diffusers pipeline: yoda takes its parts, e.g. yoda.models.from_diffusers\(pipe.unet, pipe.vae, "
    with pytest.raises(TypeError, match=r"^model is a DDPMPipeline " + hint):
        yoda.sample(pipe, torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match=r"^unet must be a diffusers UNet2DConditionModel, got DDPMPipeline " + hint):
        SDUpscalerAdapter(pipe, vae, sched, low, emb, guidance_scale=1.0)
    with pytest.raises(ValueError, match=rf"^noise_level {LEVEL} must be below the low-res scheduler's T = "
                                         rf"{sched.config.num_train_timesteps} \(low_res_scheduler_config: the "
                                         r"pipeline's DDPMScheduler, T = 1000, not its sampler's\)$"):
        SDUpscalerAdapter(unet, vae, sched, sched, emb, guidance_scale=1.0, noise_level=LEVEL)  # the two swapped
    # swapped where both configs have T = 1000 (the real pipeline's): the check above never fired, and the sampler
    # took the low-res DDPM's eps for the upscaler's v
    with pytest.raises(ValueError, match=r"^scheduler_config predicts eps and low_res_scheduler_config v: are the two "
                                         r"swapped\?"):
        SDUpscalerAdapter(unet, vae, low, sched, emb, guidance_scale=1.0)
    # numpy / tensor ints as the seeds take them (were refused); a UNet without noise-level classes is named so
    # (it said "an int in [0, -1]")
    for level in (np.int64(LEVEL), torch.tensor(LEVEL)):
        assert SDUpscalerAdapter(unet, vae, sched, low, emb, guidance_scale=1.0, noise_level=level).noise_level == LEVEL
    unet.config.num_class_embeds = None  # (a FrozenDict: as a UNet built without it reads)
    with pytest.raises(ValueError, match=r"^unet has no noise-level class embedding \(num_class_embeds is None\)"):
        SDUpscalerAdapter(unet, vae, sched, low, emb, guidance_scale=1.0)
    unet.config.num_class_embeds = 351
    for scale in (0.0, 0.5, 1.0):  # the pipeline guides only above 1: no negative embeddings needed, none used
        assert not SDUpscalerAdapter(unet, vae, sched, low, emb, guidance_scale=scale).guided
    with pytest.raises(ValueError, match="negative_prompt_embeds must have prompt_embeds' shape"):
        SDUpscalerAdapter(unet, vae, sched, low, emb, torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="prompt_embeds must be a"):
        SDUpscalerAdapter(unet, vae, sched, low, torch.zeros(3, 8), guidance_scale=1.0)
    # embeddings of another text encoder's width, or integer ones: a matmul error at the first UNet call (after
    # the VAE encode) or a silent cast; a noise_seed that is no int: int("a")'s message, or 1.7 taken as 1
    for bad in (torch.zeros(1, 3, 16), torch.zeros(1, 3, 8, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"^prompt_embeds must be floating with D = 8 \(the UNet's "
                                             r"cross_attention_dim"):
            SDUpscalerAdapter(unet, vae, sched, low, bad, guidance_scale=1.0)
    for seed in ("a", 1.7):
        with pytest.raises(TypeError, match="^noise_seed must be an int"):
            SDUpscalerAdapter(unet, vae, sched, low, emb, guidance_scale=1.0, noise_seed=seed)
    assert SDUpscalerAdapter(unet, vae, sched, low, emb, guidance_scale=1.0, noise_seed=np.int64(5)).noise_seed == 5
    with pytest.raises(TypeError, match="unet must be a diffusers UNet2DConditionModel"):
        SDUpscalerAdapter(vae, vae, sched, low, emb)
    with pytest.raises(ValueError, match="prompt embeddings have batch 2, lr has 3"):
        bad = SDUpscalerAdapter(unet, vae, sched, low, torch.zeros(2, 3, 8), guidance_scale=1.0)
        yoda.sample(bad, torch.zeros(3, 3, 8, 8), steps=2, sampler="ddim", progress=False)


def test_a_call_naming_nothing_samples_as_the_pipeline():
    """yoda.sample(adapter, lr) failed ("steps=1000 with spacing='sd_leading' ... fewer steps"): the config gave the
    spacing but no steps, so it took T. The pipeline's 75 steps (at most T - 1 under its steps_offset 1)."""
    unet, vae, sched, low = modules()
    emb = torch.zeros(1, 3, 8)
    ad = SDUpscalerAdapter(unet, vae, sched, low, emb, guidance_scale=1.0)
    assert dict(ad.sampling_defaults) == {"sampler": "ddim", "steps": T - 1, "spacing": "sd_leading"}
    lr = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    got = yoda.sample(ad, lr, seed=0, progress=False)
    assert torch.equal(got, yoda.sample(ad, lr, sampler="ddim", spacing="sd_leading", steps=T - 1, seed=0,
                                        progress=False))


def test_a_window_reads_its_own_noised_lr():
    """crop_cond of a window offset in both axes is the same slice of the prepared condition (the windows test's
    exact check used one window over the whole grid: a crop from column 0 passed), the rest passed through."""
    unet, vae, sched, low = modules()
    lr = torch.rand(1, 3, 9, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ad = SDUpscalerAdapter(unet, vae, sched, low, torch.randn(1, 3, 8), torch.randn(1, 3, 8), guidance_scale=3.0)
    cond = ad.prepare(lr).cond
    got = ad.crop_cond(cond, slice(2, 6), slice(3, 7))
    assert torch.equal(got.image, cond.image[..., 2:6, 3:7])
    assert got.level is cond.level and got.emb is cond.emb and got.neg is cond.neg
