"""Names and limits that both the library and the command line's parser read. The parser (yoda.cli_parser) imports
no torch, so that `yoda --help` and a mistyped option answer at once; these live here, imported by both, instead of
being written out twice."""

# How the embedded model samples where a call does not say (its ModelCard's sampling, yoda.models.loading's
# DEFAULT_SAMPLING; the CLI's defaults too): chosen for it on a selection set (scikit-image's held-out colour images,
# not the test photographs) as the highest PSNR, benchmarks/QUALITY.md. It is an x0 regressor trained for one step:
# DDPM over its T = 1000 steps gives a worse picture in about 450 times the time. DEFAULT_SAMPLER is also the
# sampler of the CLI and yoda.evaluate for a model whose card names none (yoda.adapters.model_sampler; yoda.sample's
# own default is "ddpm", upstream's).
DEFAULT_SAMPLER, DEFAULT_STEPS = "ddim", 1

# yoda.sampling.solvers: the sigma-space solvers and the named sigma schedules
SOLVERS = ("euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_2", "dpm_2_a", "dpmpp_2s_a")
SIGMA_SCHEDULES = ("karras", "exponential", "uniform", "diffbir")

# The steps `yoda upscale` / `yoda eval` and yoda.evaluate take for a model whose card names none (yoda.sample's
# own default is every step of T): few enough to be practical on a CPU, many enough that DDPM / DDIM turn an eps
# model's one-step error into an image (one step of an eps model is noise: its x0 multiplies the noise error by
# 1 / sqrt(ab_T), about 150 for SR3's schedule). yoda.adapters.OTHER_MODEL_STEPS.
OTHER_MODEL_STEPS = 50

# yoda.photos.PACKAGES: the Debian wallpaper packages `yoda data build` gathers photographs from
WALLPAPER_PACKAGES = ("plasma-workspace-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04",
                      "mate-backgrounds")

# yoda.training.report.MAX_MINUTES: --minutes at most (about 190 years; 1e308 overflowed to inf seconds)
MAX_MINUTES = 1e8

# The image formats yoda writes, by suffix (yoda.images: the format follows the suffix; `yoda upscale --format`)
NAME_MAX = 255  # the longest file name, in bytes, of Linux's, macOS's and Windows' file systems
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
