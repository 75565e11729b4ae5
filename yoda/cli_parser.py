"""The `yoda` command line's options: one argparse subparser per command (yoda.cli runs them), and the one-line
form of an error that names them."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Optional

from . import __version__
from .console import error_line, write
from .errors import printable
from .names import (DEFAULT_SAMPLER, DEFAULT_STEPS, MAX_MINUTES, OTHER_MODEL_STEPS, SIGMA_SCHEDULES,  # (torch-free)
                    NAME_MAX, OUTPUT_SUFFIXES, SOLVERS, WALLPAPER_PACKAGES)


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none to say."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (not action.option_strings or d is None or d is False or d is argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        shown = " ".join(map(str, d)) if isinstance(d, (list, tuple)) else d
        return f"{text} (default {shown})" if text else f"default {shown}"

    def _split_lines(self, text, width):  # not at hyphens: dino-vits8:PATH, package names stay whole
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        import textwrap

        return textwrap.fill(self._whitespace_matcher.sub(" ", text).strip(), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


class _Once(argparse.Action):
    """An option that may be given once: argparse keeps the last of several (`yoda eval --model A --model B`
    evaluated B alone, naming neither; `--lower-bounds 0.4 --lower-bounds 0.8` evaluated 0.8 alone)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in seen:
            before = getattr(namespace, self.dest)
            if self.nargs == "+":  # several values are one option's: say how
                parser.error(f"{option_string} is given twice; give its values after one: {option_string} "
                             f"{' '.join(map(str, [*before, *values]))}")
            parser.error(f"{option_string} is given twice ({before} and {values}); give it once (run the command "
                         "once for each)")
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


NEGATIVE_NUMBER = re.compile(r"^-(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``yoda upscale: error: ...``) instead of the usage block, the defaults in
    the help (_Help), and every option that takes a value given at most once (_Once)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)
        # a negative value is a value, also in exponent form and as -inf / -nan (`--eta -1e-3` was "expected one
        # argument", where --eta=-1e-3 got --eta's own error); no option of yoda's looks like one
        self._negative_number_matcher = NEGATIVE_NUMBER

    def add_argument(self, *args, **kwargs):
        # (train --config A --config B trained B, --steps 1 --steps 2 took 2, without a word: each option that was
        # not marked _Once by hand)
        if args and args[0].startswith("-") and "action" not in kwargs:
            kwargs["action"] = _Once
        return super().add_argument(*args, **kwargs)

    dashed_files: tuple = ()  # main's arguments that start with "-" and name an existing file

    def error(self, message: str):
        files = "".join(f"; {t} is a file: write ./{t} (a name starting with '-' is read as an option)"
                        for t in self.dashed_files)
        error_line(f"{self.prog}: error: {message}{files} (see: {self.prog} -h)")
        sys.exit(2)

    def _print_message(self, message, file=None):
        # --help, --version: a reader that went away (`yoda -h | head -1`) is no error (a traceback from argparse
        # where it does not swallow the OSError itself: Debian's Python 3.11.2 does not, 3.11.7 does)
        if file not in (None, sys.stdout, sys.stderr):
            super()._print_message(message, file)
        elif message:
            write("stdout" if file is sys.stdout else "stderr", message, True)


# The CLI's sampling defaults, the embedded model's (DEFAULT_SAMPLER, DEFAULT_STEPS: yoda.names), no attention; any
# other --model (an upstream SR3 / SRDiff checkpoint, a model you trained) gets OTHER_MODEL_STEPS
DEFAULT_ATTENTION = "none"

ATTENTION_HELP = "edge | gaussian | sift | dino-vits8:PATH | dino-resnet50:PATH"


def _device_arg(p) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (the default): cuda when torch sees a GPU, else cpu")


def _quiet_arg(p) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (none either when stderr is not a terminal)")


def _images_arg(p) -> None:
    p.add_argument("--images", type=_path, nargs="+", default=None, metavar="PATH",
                   help="HR image files, or folders of them (default: scikit-image's astronaut, coffee, rocket, "
                        "chelsea: never trained on, but the CLI's defaults were chosen on them; for a test, give the "
                        "held-out photographs' folder, `yoda data build`'s heldout/)")


def _sampling_args(p, steps: Optional[int], sampler: str, solvers: bool = False, lower_bound: bool = True,
                   models_lower_bound: bool = True) -> None:
    p.add_argument("--model", type=_path, default="default",
                   help="'default' (the embedded x4 model), a yoda model file, sr3:PATH (an upstream SR3 "
                        "*_gen.pth) or srdiff:PATH (an upstream SRDiff model_ckpt_steps_*.ckpt)")
    p.add_argument("--model-config", type=_path, default=None, metavar="PATH",
                   help="with sr3:PATH, the checkpoint's SR3 JSON config (default: the 16->128 config); with "
                        "srdiff:PATH, its YAML config (default: read from the weights)")
    if steps is None:  # the model decides (cli_models.default_steps)
        p.add_argument("--steps", type=int, default=None,
                       help=f"sampling steps (default: the model file's own, {DEFAULT_STEPS} for the embedded model "
                            f"and models trained with its config; {OTHER_MODEL_STEPS} (at most T) for a --model "
                            f"that names none; YODA's (upscale, demo, eval's YODA rows): at least the fewest whose "
                            f"last step refines every pixel)")
    else:
        p.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps})")
    own = steps is None  # the model decides (cli_models.default_steps): its file's sampler, else this one
    p.add_argument("--sampler", choices=("ddpm", "ddim") + (SOLVERS if solvers else ()),
                   default=None if own else sampler, metavar="SAMPLER",
                   help=f"the sampler: ddpm (ancestral), ddim"
                        f"{', or a k-diffusion solver: ' + ', '.join(SOLVERS) if solvers else ''} "
                        f"(default {'the model file' + chr(39) + 's own, else ' if own else ''}{sampler}; with the "
                        f"embedded model DDIM at 1 step is best"
                        + (", and the two-call solvers heun, dpm_2, dpm_2_a at few steps spoil the picture: "
                           "benchmarks/QUALITY.md)" if solvers else ")"))
    if solvers:
        p.add_argument("--eta", type=float, default=None,
                       help="DDIM eta (default 0), or the noise scale of the ancestral (euler_a, dpm_2_a, dpmpp_2s_a) "
                            "and SDE solvers (default 1)")
        p.add_argument("--sigmas", choices=SIGMA_SCHEDULES, default=None,
                       help="noise levels of the k-diffusion solvers (default karras)")
    if lower_bound and models_lower_bound:  # None: the model's (cli_models.default_steps)
        p.add_argument("--lower-bound", type=float, default=None,
                       help="l of the mask schedule tau = t/T - l (default: the model file's, which a model trained "
                            "with YODA's masked input records, else 0.6; >= 1: plain sampling)")
    elif lower_bound:
        p.add_argument("--lower-bound", type=float, default=0.6,
                       help="l of the mask schedule tau = t/T - l (default 0.6; >= 1: plain sampling)")
    p.add_argument("--seed", type=_seed_arg, default=0, help="seed of the noise, 0 to 4294967295 (default 0)")
    _device_arg(p)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (none either when stderr is not a terminal); for upscale also no line per "
                        "image: errors, notes and the closing count only")


def _max_pixels_arg(p) -> None:
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse input (and upscaled) images of more than N pixels (default yoda.images.MAX_PIXELS "
                        "= 8192*8192 or $YODA_MAX_PIXELS; 0: no limit)")


DEFAULT_MAX_MEMORY = 2 * 1024**3
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _bytes_arg(v: str) -> int:
    """'2G', '512M', '1.5GB', '100KiB', '1000000', '1e9' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?(?:E\+?\d+)?)\s*([KMGT]?)(?:I?B)?\s*", v.upper())
    if m is None:
        raise argparse.ArgumentTypeError(f"{v!r} is not a size (e.g. 2G, 512M, 0)")
    if not math.isfinite(float(m.group(1)) * _UNITS[m.group(2)]):  # 1e400: an OverflowError's traceback
        raise argparse.ArgumentTypeError(f"{v!r} is not a size (e.g. 2G, 512M, 0)")
    n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if float(m.group(1)) and n < 1024:  # 0.5 (meant as GB?) was 0: no limit
        raise argparse.ArgumentTypeError(f"{v!r} is {n} bytes, less than any image needs (0 means no limit; give "
                                         "a unit: 2G, 512M)")
    return n


def _tiles_arg(v: str) -> tuple:
    """'W', 'W,O', 'WxH' or 'WxH,O' -> (window, O): window W, or (H, W) for a rectangle (width x height, as image
    sizes are said); O None when not given (yoda.sampling.tiles.default_overlap: a quarter of the shorter side
    on the model's grid)."""
    size, _, over = v.partition(",")
    try:
        sides = [int(p) for p in size.lower().split("x")]
        overlap = int(over) if over else None
        if len(sides) not in (1, 2):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} must be W, W,O, WxH or WxH,O (integers)") from None
    # (O < the longer side only: a side that spans the image does not tile it, and yoda.sample checks O against the
    # sides that tile each image; a 3016x96 window of a 96-high strip overlaps by 752 by default)
    if min(sides) < 1 or (overlap is not None and not 0 <= overlap < max(sides)):
        raise argparse.ArgumentTypeError(f"{v!r} must be W, W,O, WxH or WxH,O with W, H >= 1 and 0 <= O < W or H")
    return (sides[0] if len(sides) == 1 or sides[0] == sides[1] else (sides[1], sides[0]), overlap)


def _positive_float(v: str) -> float:
    """A float in (0, MAX_MINUTES] (--minutes: 0, a negative number or nan trained one step or the whole run)."""
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    if not 0 < f <= MAX_MINUTES:  # NaN; 1e308 minutes overflowed to inf seconds
        raise argparse.ArgumentTypeError(f"{v!r} must be a number > 0 and <= {MAX_MINUTES:g}")
    return f


MAX_T = 10**6  # `yoda attention --T / --steps`: the update ratio lists every step's threshold (1e8: 5 GB)


def _positive_int(v: str, most: int | None = None) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not an integer") from None
    if n < 1 or (most is not None and n > most):
        raise argparse.ArgumentTypeError(f"{v!r} must be an integer >= 1" + (f" and <= {most}" if most else ""))
    return n


def _step_count(v: str) -> int:
    return _positive_int(v, MAX_T)


def _path(v: str) -> str:
    """A path option: not empty (an unset $DIR in a script made `--images ""` the built-in images, `-o ""` the
    working folder, and an input "" the folder "."), and not "-" (stdin / stdout, which no command takes)."""
    if not v.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?)")
    if v == "-":  # (-o - made a folder named "-" and printed its lines where a pipe wanted an image)
        raise argparse.ArgumentTypeError("'-': yoda reads and writes files and folders, not stdin or stdout; give "
                                         "a path")
    for part in Path(v).parts:  # (each command's first look at it failed as "NAME: File name too long", unnamed)
        n = len(os.fsencode(part))
        if n > NAME_MAX:
            raise argparse.ArgumentTypeError(f"{printable(v)}: a file or folder name of {n} bytes; a file system "
                                             f"takes at most {NAME_MAX}")
    return os.path.expanduser(v)  # --model=~/m.safetensors: the shell leaves a ~ after "=" as it is


def _seed_arg(v: str) -> int:
    """--seed: an integer in [0, 2**32 - 1] (yoda.sample's None, a drawn seed, has no command-line form)."""
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not an integer") from None
    if not 0 <= n <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{v!r} must be an integer in [0, 4294967295]")
    return n


def _speed_args(p) -> None:
    """yoda.sample's speed options of the denoiser's network (yoda.sampling.speed)."""
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser's network")
    p.add_argument("--autocast", choices=("bf16", "fp16"), default=None,
                   help="run the denoiser's network under autocast (the sampler step stays float32)")
    p.add_argument("--channels-last", action="store_true", help="channels-last inputs to the denoiser's network")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="capture the denoiser's network call in CUDA graphs (CUDA only)")


def _debug_arg(p, top: bool = False) -> None:
    # on the main parser and on every subcommand (yoda --debug CMD ... or yoda CMD ... --debug); the
    # subcommands' default is SUPPRESS so that they do not reset the main parser's value
    p.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="print the traceback of every error, user errors included")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="yoda", description="YODA: attention-guided diffusion super-resolution")
    _debug_arg(ap, top=True)
    ap.add_argument("--version", action="version", version=f"yoda {__version__}")
    # (without a metavar, a missing or mistyped command was said of argparse's own name: "arguments are required: cmd")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("upscale", help="super-resolve images (PNG, JPEG, WebP, TIFF, BMP) or folders of them")
    p.add_argument("inputs", nargs="+", type=_path, metavar="IN",
                   help="image files, or folders of them (sorted by name)")
    p.add_argument("-o", "--output", type=_path, required=True,
                   help="output file (one input; its suffix sets the format) or folder (several inputs, or a name "
                        "without a suffix: created, holding STEM_xS.png for each input, S the scale; --format)")
    p.add_argument("--scale", type=int, default=None,
                   help="the model's factor, checked (default: the model's; the embedded model's is 4)")
    p.add_argument("--attention", default=DEFAULT_ATTENTION,
                   help="edge | gaussian | sift | dino-vits8:PATH | dino-resnet50:PATH | none (plain sampling; "
                        f"default {DEFAULT_ATTENTION})")
    p.add_argument("--cfg-scale", type=float, default=None, metavar="W",
                   help="classifier-free guidance scale, for a model with an unconditional branch (default: the "
                        "model's own; the embedded and yoda-format models have none)")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="a folder stands for the images of its subfolders too (not hidden ones), whose outputs go to "
                        "the same subfolders of the output folder")
    p.add_argument("--format", type=str.lower, choices=[s[1:] for s in OUTPUT_SUFFIXES], default=None,
                   help="the format of the outputs written into a folder, STEM_xS.FORMAT (default png; JPEG and WebP "
                        "at quality 95, a quarter to a third of PNG's size for a photograph); a file -o takes its "
                        "suffix's")
    p.add_argument("--strip-metadata", action="store_true",
                   help="write outputs without their inputs' EXIF and XMP metadata (camera, dates, GPS position, "
                        "keywords ...), which "
                        "they carry by default, less what described the input's pixels (orientation, thumbnail, size)")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave inputs whose output file exists, or that another `yoda upscale --skip-existing` is "
                        "making")
    p.add_argument("--tiles", type=_tiles_arg, default=None, metavar="W[xH][,O]",
                   help="denoise in Gaussian-blended windows of W HR pixels (WxH: W wide, H high) overlapping by O "
                        "(default a quarter of the shorter side that tiles the image, a side spanning it not counted, "
                        "rounded down to the model's size multiple, at least one multiple); all multiples of the "
                        "model's size multiple (default: chosen when --max-memory needs it)")
    p.add_argument("--window-batch", type=int, default=None, metavar="N",
                   help="windows per denoiser call when denoising in windows (default: what fits --max-memory)")
    p.add_argument("--max-memory", type=_bytes_arg, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                   help="memory budget of the denoiser, e.g. 2G, 512M (default 2G; 0: no limit): an image whose "
                        "estimated need (yoda.cli_upscale.HR_BYTES_PER_PIXEL per HR pixel) exceeds it runs in windows; "
                        "the image's own buffers (about 96 bytes per HR pixel) come on top")
    _speed_args(p)
    _max_pixels_arg(p)
    _sampling_args(p, None, DEFAULT_SAMPLER, solvers=True)
    _debug_arg(p)

    p = sub.add_parser("attention", help="draw an image's attention map and mask growth")
    p.add_argument("image", type=_path, help="the LR image")
    p.add_argument("-o", "--output", type=_path, required=True,
                   help="the figure (PNG, JPEG, WebP, TIFF, BMP)")
    p.add_argument("--attention", default="edge", help=ATTENTION_HELP)
    p.add_argument("--lower-bound", type=float, default=0.6, help="l of the mask schedule tau = t/T - l")
    p.add_argument("--T", type=_step_count, default=1000,
                   help=f"training steps T of the mask schedule (at most {MAX_T})")
    p.add_argument("--steps", type=_step_count, default=None,
                   help="count the update ratio over the steps of a run of this many steps (yoda.sample's spacing "
                        "for SR3 / SRDiff models; `yoda upscale --attention` says how many it takes) and draw their "
                        "masks; default: over every step of T")
    p.add_argument("--scale", type=_positive_int, default=4,
                   help="the SR factor: the map is the one yoda.sample uses at the HR size (resized, renormalised)")
    _max_pixels_arg(p)
    _debug_arg(p)

    p = sub.add_parser("demo", help="plain vs YODA on an image no model here was trained on, one comparison picture")
    p.add_argument("-o", "--output", type=_path, default="demo.png",
                   help="the picture (PNG, JPEG, WebP, TIFF, BMP)")
    p.add_argument("--image", default="astronaut",
                   help="one of scikit-image's images that no model here was trained on (astronaut, coffee, rocket, "
                        "chelsea: the CLI's defaults were chosen on these four; default astronaut)")
    p.add_argument("--lr-size", type=int, default=64, help="LR crop size (HR = scale * this)")
    p.add_argument("--attention", default="edge", help=f"the YODA column's attention: {ATTENTION_HELP}")
    _sampling_args(p, None, DEFAULT_SAMPLER)
    _debug_arg(p)

    p = sub.add_parser("eval", help="PSNR / SSIM / colour shift table, plain vs YODA")
    _images_arg(p)
    p.add_argument("--lower-bounds", type=float, nargs="+", default=[0.4, 0.6, 0.8],
                   help="lower bounds l of the YODA rows (default 0.4 0.6 0.8)")
    p.add_argument("--attention", nargs="+", default=["edge", "gaussian"],
                   help=f"attention maps of the YODA rows: {ATTENTION_HELP}")
    p.add_argument("--max-size", type=int, default=128,
                   help="centre-crop HR to at most this (0: full size, cut to what the model takes, a multiple of the "
                        "scale and its size multiple; QUALITY.md's held-out tables use 256)")
    p.add_argument("-o", "--output", type=_path, default=None,
                   help="also write the results: FILE.csv one row per image and method, any other name the table")
    p.add_argument("--y-channel", action="store_true",
                   help="PSNR and SSIM on the luma Y (ITU-R BT.601) with a border of scale pixels cut off and an "
                        "11x11 Gaussian SSIM window (scikit-image's, reflected at the borders of an image under 11 px "
                        "a side), as SR papers report them (default: RGB, whole image)")
    p.add_argument("--lpips", nargs=2, type=_path, metavar=("BACKBONE", "LIN"), default=None,
                   help="add an LPIPS column from local files: torchvision vgg16 weights and the lpips "
                        "package's v0.1 vgg.pth linear heads (nothing is downloaded)")
    _sampling_args(p, None, DEFAULT_SAMPLER, solvers=True, lower_bound=False)
    _max_pixels_arg(p)
    _debug_arg(p)

    p = sub.add_parser("figures", help="the paper's Fig. 3, 4 and 5 (update ratio, crops, regional error) as PNGs")
    _images_arg(p)
    p.add_argument("-o", "--output", type=_path, required=True, help="output folder (created if missing)")
    p.add_argument("--attention", nargs="+", default=["edge", "gaussian", "sift"],
                   help=f"attention methods of Fig. 3; the first one is YODA's in Fig. 4 and 5: {ATTENTION_HELP}")
    p.add_argument("--lower-bounds", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0],
                   help="lower bounds l of Fig. 3's update-ratio bars")
    p.add_argument("--eta", type=float, default=0, help="DDIM eta")
    p.add_argument("--max-size", type=int, default=128,
                   help="centre-crop HR to at most this (0: full size, cut to what the model takes, a multiple of the "
                        "scale and its size multiple; QUALITY.md's figures use 128)")
    p.add_argument("--bins", type=int, default=10, help="bins of the attention value in Fig. 5")
    p.add_argument("--degree", type=int, default=2, help="degree of Fig. 5's polynomial fit")
    p.add_argument("--crops", type=int, default=3, help="images shown in Fig. 4")
    p.add_argument("--lpips", nargs=2, type=_path, metavar=("BACKBONE", "LIN"), default=None,
                   help="add an LPIPS-per-bin panel to Fig. 5 from local files (torchvision vgg16 weights and "
                        "the lpips package's v0.1 vgg.pth linear heads; nothing is downloaded)")
    _sampling_args(p, 20, "ddim", models_lower_bound=False)  # the figures' own l (their sweep: --lower-bounds)
    _max_pixels_arg(p)
    _debug_arg(p)

    p = sub.add_parser("train", help="train a model from a JSON config",
                       description="Train a model from a JSON config into --out. Ctrl-C or SIGTERM stops after the "
                                   "step in progress and saves the checkpoint, the log and the weights (a second one "
                                   "aborts at once); the same command resumes from --out's checkpoint (delete it, "
                                   "or choose another --out, to start afresh). Under torchrun it trains "
                                   "data-parallel.")
    p.add_argument("--config", type=_path, required=True,
                   help="a JSON config file, or the name of an installed one (default_x4, compare_plain, compare_yoda)")
    p.add_argument("--out", type=_path, default=None,
                   help="output folder (default runs/<name>); resumes if it has a checkpoint")
    p.add_argument("--steps", type=int, default=None, help="total steps (overrides the config)")
    p.add_argument("--decay-from", type=int, default=None, metavar="STEP",
                   help="decay the learning rate linearly from STEP to 0 at --steps (the last step trains at "
                        "lr / (steps - STEP); 0: no decay; at least the config's warm-up steps; overrides the config)")
    p.add_argument("--warmup", type=int, default=None, metavar="STEPS",
                   help="warm the learning rate up linearly over the first STEPS steps (0: none; overrides the "
                        "config, e.g. default_x4's 200 for a short fine-tune)")
    p.add_argument("--val-every", type=int, default=None, metavar="STEPS",
                   help="validate every STEPS steps on the held-out images (--data-dir's heldout/; 0: never; "
                        "overrides the config: default_x4 does not validate)")
    p.add_argument("--init", type=_path, default=None, metavar="WEIGHTS",
                   help="start from these weights (a yoda model file of the config's model, e.g. an earlier "
                        "run's export, or default: the embedded model): fine-tuning; the same command resumes, "
                        "from the checkpoint's weights")
    p.add_argument("--minutes", type=_positive_float, default=None, help="stop (and save) after this much wall time")
    _device_arg(p)
    p.add_argument("--weights-name", default="model.safetensors",
                   help="file name of the exported weights, in --out (a .safetensors file)")
    p.add_argument("--data-dir", type=_path, default=None,
                   help="a folder with train/ and heldout/ image folders, from `yoda data build --out DIR` "
                        "(photographs) or `yoda data export DIR` (scikit-image's bundled images)")
    _quiet_arg(p)
    _debug_arg(p)

    p = sub.add_parser("plot", help="loss curves + validation PSNR of training logs in one PNG")
    p.add_argument("logs", nargs="+", type=_path, metavar="LOG",
                   help="log.csv files that yoda train writes, or run folders holding one")
    p.add_argument("-o", "--output", type=_path, required=True, help="the picture (PNG)")
    p.add_argument("--labels", nargs="+", default=None,
                   help="one legend label per log (default: the run folder's name, more of the path where two "
                        "would be alike)")
    _debug_arg(p)

    p = sub.add_parser("data", help="training and test images: photographs from installed Debian wallpaper "
                                    "packages, or scikit-image's bundled images")
    _debug_arg(p)
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{build,export}")
    what = ("write DIR/train, DIR/heldout and DIR/manifest.json from the photographs of the installed packages "
            + ", ".join(WALLPAPER_PACKAGES) + " (yoda.photos); a rerun replaces DIR/train and DIR/heldout whole")
    p = dsub.add_parser("build", help=what, description=what)
    _data_out_args(p)
    p.add_argument("--short-side", type=int, default=512,
                   help="downscale each photograph to this short side (at least 64)")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per photograph, no progress bar")
    _debug_arg(p)
    p = dsub.add_parser("export", help="write DIR/train and DIR/heldout from scikit-image's bundled images (no "
                                       "package needed; few and small: for trying yoda train out)")
    _data_out_args(p)
    _debug_arg(p)
    return ap


def command_parser(ap: argparse.ArgumentParser, a: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command ``a`` names (``yoda data build``'s for data build), for its errors: an unknown
    option was reported by the main parser, whose help (`yoda -h`) does not list the command's options."""
    def sub(p, name):
        actions = p._subparsers._group_actions if p._subparsers else []
        return next((act.choices[name] for act in actions if name in act.choices), p)

    p = sub(ap, a.cmd)
    return sub(p, a.data_cmd) if getattr(a, "data_cmd", None) else p


def _data_out_args(p) -> None:
    """`yoda data build` and `export` name their folder alike: DIR or -o/--out DIR (checked in yoda.cli.cmd_data)."""
    p.add_argument("dir", nargs="?", type=_path, metavar="DIR", default=None, help="output folder")
    p.add_argument("-o", "--out", type=_path, default=None, metavar="DIR", help="output folder (the same as DIR)")


# The library's messages start with the name of the argument at fault; the command line names its option.
OPTION_OF = {"lower_bound": "--lower-bound", "lower_bounds": "--lower-bounds", "steps": "--steps", "seed": "--seed",
             "eta": "--eta", "sigmas": "--sigmas", "sampler": "--sampler", "max_size": "--max-size",
             "windows": "--tiles", "window_batch": "--window-batch", "cfg_scale": "--cfg-scale",
             "attentions": "--attention", "attention": "--attention", "bins": "--bins", "degree": "--degree",
             "crops": "--crops", "short_side": "--short-side", "labels": "--labels", "compile": "--compile",
             "autocast": "--autocast", "cuda_graphs": "--cuda-graphs", "channels_last": "--channels-last",
             "device": "--device"}


def one_line(e: BaseException, options: bool = True) -> str:
    """The message of ``e`` on one line; ``options``: a leading library argument name becomes its option's (not
    for train, whose config keys share those names)."""
    pkg = missing_package(e)
    if pkg is not None:  # what pip installs, which is not always what Python imports (cv2, skimage, yaml)
        dist = DISTRIBUTIONS.get(pkg, pkg)
        named = dist if dist == pkg else f"{dist} (import {pkg})"
        return f"this needs the Python package {named}, which is not installed: pip install {dist}"
    msg = str(e).strip()
    if isinstance(e, OSError) and e.strerror:  # not Python's "[Errno 28] " prefix
        msg = e.strerror if e.filename is None else f"{printable(str(e.filename))}: {e.strerror}"  # a name's \n
    if not msg:
        return type(e).__name__
    line = printable(msg.splitlines()[0])
    name = re.match(r"\w+(?=[ :\[])", line)
    if options and name and name.group() in OPTION_OF:
        line = OPTION_OF[name.group()] + line[name.end():]
    lpips = re.match(r"LPIPS (backbone|lin)_weights:", line) if options else None  # (yoda.lpips's argument names)
    if lpips:
        line = ("--lpips, its first file (torchvision's VGG16):" if lpips.group(1) == "backbone" else
                "--lpips, its second file (the LPIPS linear heads):") + line[lpips.end():]
    if options:  # the library's "leave eta None", "sampler='ddim'", "steps=" further on: the options' words, but
        # not inside a repr (EvalSettings(steps=None, sampler='ddpm')), which stays as Python wrote it
        parts = re.split(f"({_REPR})", line)
        line = "".join(part if re.fullmatch(_REPR, part) else _option_words(part) for part in parts)
    if options and line.startswith("unknown attention "):  # yoda.attention.check_name's
        return f"--attention: {line}"
    return line[len("path: "):] if line.startswith("path: ") else line  # read_image's argument: the file follows


_REPR = r"\w+\((?:[^()]|\([^()]*\))*\)"  # a call's repr, with tuples in it: Name(a=1, b=(2, 3))


def _option_words(text: str) -> str:
    text = re.sub(r"\bleave (\w+) (None|out)\b", lambda m: f"leave out {OPTION_OF[m[1]]}" if m[1] in OPTION_OF
                  else m[0], text)
    text = re.sub(r"\bspacing=(?=[\s,;:)]|$)", "the model's spacing", text)  # no option: the model card's
    return re.sub(r"\b(\w+)=(?:'([\w-]*)'|(?=[\s,;:)]|$))", lambda m: (
        m[0] if m[1] not in OPTION_OF else OPTION_OF[m[1]] + ("" if m[2] is None else f" {m[2]}")), text)


# import name -> the distribution pip installs, where they differ (yoda-sr's own dependencies and extras)
DISTRIBUTIONS = {"cv2": "opencv-python-headless", "skimage": "scikit-image", "yaml": "pyyaml", "PIL": "pillow"}


def missing_package(e: BaseException) -> Optional[str]:
    """The third-party package a ModuleNotFoundError names (an optional dependency that is not installed), or
    None (not such an error, or a yoda module: a bug)."""
    if isinstance(e, ModuleNotFoundError) and e.name and not e.name.split(".")[0] in ("yoda", "yoda_kernels"):
        return e.name.split(".")[0]
    return None
