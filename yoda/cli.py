"""The ``yoda`` command line: upscale, attention, demo, eval, train, plot.

    yoda upscale IN... -o OUT [--model default|PATH] [--attention edge] [--steps 50] [--sampler ddim] ...
    yoda attention IMAGE -o OUT.png [--attention edge] [--lower-bound 0.6]
    yoda demo [-o demo.png]
    yoda eval [--images FOLDER] [--lower-bounds 0.4 0.6 0.8] [--attention edge gaussian]
              [--lpips VGG16.pth LIN.pth]
    yoda train --config yoda/configs/default_x4.json [--out DIR] [--steps N] [--device auto|cpu|cuda]
    yoda plot LOG.csv... -o curves.png [--labels ...]

User errors (missing or unreadable files, bad options, a model that does not fit) print one line
``yoda: error: ...`` on stderr and exit with code 2; nothing is half-written (every output is written to a
temporary file and renamed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default_x4.safetensors"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class UserError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------
def load_model(spec: str, device):
    """--model: "default" (the embedded x4 model) or a path to a "yoda" model file."""
    from .checkpoint import load

    path = DEFAULT_WEIGHTS if spec == "default" else Path(spec)
    if spec == "default" and not path.exists():
        raise UserError(f"the embedded default model {path} is not installed; pass --model PATH")
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    return load("yoda", str(path)).to(device).eval()


def _device(name: str):
    from .train import resolve_device

    return resolve_device(name)


def _adapter(model):
    from .adapters import as_adapter

    return as_adapter(model)


def _lcm(a: int, b: int) -> int:
    import math

    return a * b // math.gcd(a, b)


def upscale_tensor(model, lr, *, attention, steps, sampler, eta, lower_bound, seed, progress, backend="auto"):
    """SR of lr (1, 3, h, w) of any size: lr is edge-padded so that s*h, s*w fit the model's multiple, the
    result is cropped back to (1, 3, s*h, s*w)."""
    import torch.nn.functional as F

    from .sampler import sample

    ad = _adapter(model)
    s, m = ad.scale, int(getattr(ad, "multiple", 1))
    lr_mult = _lcm(s, m) // s  # LR size multiple that gives an HR multiple of m
    h, w = lr.shape[-2:]
    ph, pw = (-h) % lr_mult, (-w) % lr_mult
    x = F.pad(lr, (0, pw, 0, ph), mode="replicate") if (ph or pw) else lr
    A = None
    if attention is not None:
        from .attention import get

        A = get(attention)(x) if isinstance(attention, str) else attention
    sr = sample(ad, x, attention=A, steps=steps, sampler=sampler, eta=eta, lower_bound=lower_bound, seed=seed,
                progress=progress, backend=backend)
    return sr[..., : s * h, : s * w]


def _read(path: str) -> tuple[np.ndarray, bool]:
    """(uint8 RGB (H, W, 3), whether the file is grey)."""
    from .images import read_image

    a = read_image(path)
    grey = bool((a[:, :, 0] == a[:, :, 1]).all() and (a[:, :, 1] == a[:, :, 2]).all())
    return a, grey


def _save(x, path: str, grey: bool = False) -> None:
    from .images import save_image

    if grey:
        x = x.mean(dim=-3, keepdim=True)
    save_image(x.cpu(), path)


def _save_pil(img, path: str) -> None:
    from .images import save_pil

    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(f"output {path} must end in .png, .jpg or .jpeg")
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UserError(f"output folder does not exist: {parent}")
    save_pil(img, path)


# ----------------------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------------------
def cmd_upscale(a) -> int:
    import torch

    from .images import from_uint8

    if len(a.inputs) > 1 or Path(a.output).suffix.lower() not in IMAGE_SUFFIXES:
        out_dir = Path(a.output)
        if out_dir.suffix.lower() in IMAGE_SUFFIXES:
            raise UserError(f"-o {a.output}: several inputs need an output folder, not a file name")
        targets = [str(out_dir / (Path(p).stem + f"_x{a.scale}.png")) for p in a.inputs]
    else:
        out_dir = Path(a.output).resolve().parent
        if not out_dir.is_dir():
            raise UserError(f"output folder does not exist: {out_dir}")
        targets = [a.output]
    if len(set(targets)) != len(targets):
        raise UserError("two inputs have the same file name stem; their outputs would collide")
    # read every input first, so a bad path fails before anything is written
    images = [_read(p) for p in a.inputs]
    dev = _device(a.device)
    model = load_model(a.model, dev)
    scale = _adapter(model).scale
    if a.scale != scale:
        raise UserError(f"--scale {a.scale} does not match the model, which upscales x{scale}")
    if len(a.inputs) > 1 or Path(a.output).suffix.lower() not in IMAGE_SUFFIXES:
        out_dir.mkdir(parents=True, exist_ok=True)
    for (arr, grey), src, dst in zip(images, a.inputs, targets):
        lr = from_uint8(arr).to(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            sr = upscale_tensor(model, lr, attention=a.attention, steps=a.steps, sampler=a.sampler, eta=a.eta,
                                lower_bound=a.lower_bound, seed=a.seed, progress=not a.quiet)
        _save(sr, dst, grey)
        print(f"{src} -> {dst} ({sr.shape[-1]}x{sr.shape[-2]}, {time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_attention(a) -> int:
    from .attention import attention_figure, get
    from .images import from_uint8
    from .masks import pixel_update_ratio

    arr, _ = _read(a.image)
    lr = from_uint8(arr)
    A = get(a.attention)(lr)
    fig = attention_figure(lr, A, a.lower_bound, a.T)
    _save_pil(fig, a.output)
    ratio = float(pixel_update_ratio(A, a.lower_bound)[0])
    print(f"pixel update ratio ({a.attention}, lower bound {a.lower_bound:g}): {ratio:.3f}  -> {a.output}")
    return 0


def cmd_demo(a) -> int:
    import torch
    from PIL import Image, ImageDraw

    from .adapters import upsample
    from .attention import attention_figure, get
    from .data import HELD_OUT, builtin_image, make_lr
    from .evaluate import metrics
    from .images import from_uint8, to_uint8

    if a.image not in HELD_OUT:
        raise UserError(f"--image must be one of the held-out images {', '.join(HELD_OUT)}, got {a.image!r}")
    dev = _device(a.device)
    model = load_model(a.model, dev)
    ad = _adapter(model)
    s = ad.scale
    full = builtin_image(a.image)
    size = a.lr_size * s
    H, W = full.shape[:2]
    if H < size or W < size:
        raise UserError(f"--lr-size {a.lr_size} is too large for {a.image} ({W}x{H}) at x{s}")
    y, x = (H - size) // 2, (W - size) // 2
    hr_u8 = np.ascontiguousarray(full[y : y + size, x : x + size])
    hr = from_uint8(hr_u8).to(dev)
    lr = make_lr(hr, s)
    A = get(a.attention)(lr)
    results = {"bicubic": upsample(lr, s)}
    timing = {}
    for name, attn in (("plain", None), ("YODA", A)):
        t0 = time.perf_counter()
        with torch.no_grad():
            results[name] = upscale_tensor(model, lr, attention=attn, steps=a.steps, sampler=a.sampler, eta=0.0,
                                           lower_bound=a.lower_bound, seed=a.seed, progress=not a.quiet)
        timing[name] = time.perf_counter() - t0
    # comparison row: LR (nearest), bicubic, plain, YODA, HR, attention map
    tiles = [("LR (nearest)", Image.fromarray(to_uint8(lr)[0]).resize((size, size), Image.Resampling.NEAREST))]
    for name in ("bicubic", "plain", "YODA"):
        tiles.append((name, Image.fromarray(to_uint8(results[name])[0])))
    tiles.append(("HR", Image.fromarray(hr_u8)))
    amap = (A[0, 0].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    tiles.append((f"attention ({a.attention})", Image.fromarray(amap).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")))
    pad, label_h = 6, 16
    row_w = len(tiles) * (size + pad) + pad
    strip = attention_figure(lr, A, a.lower_bound, ad.schedule.T)
    if strip.width > row_w:
        strip = strip.resize((row_w, round(strip.height * row_w / strip.width)), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (row_w, label_h + size + 2 * pad + label_h + strip.height), "white")
    dr = ImageDraw.Draw(canvas)
    for i, (label, im) in enumerate(tiles):
        px = pad + i * (size + pad)
        dr.text((px, 2), label, fill=(0, 0, 0))
        canvas.paste(im, (px, label_h))
    y2 = label_h + size + pad
    dr.text((pad, y2), f"mask growth M(t) = 1[A >= t/T - {a.lower_bound:g}]  ({a.sampler} {a.steps} steps, seed {a.seed})",
            fill=(0, 0, 0))
    canvas.paste(strip, (0, y2 + label_h))
    _save_pil(canvas, a.output)
    print(f"demo: {a.image}, LR {a.lr_size}x{a.lr_size} -> {size}x{size}, {a.sampler} {a.steps} steps, "
          f"attention {a.attention}, lower bound {a.lower_bound:g}")
    print("| method | PSNR (dB) | SSIM | L shift | ab shift | time (s) |")
    print("|---|---|---|---|---|---|")
    for name in ("bicubic", "plain", "YODA"):
        m = metrics(to_uint8(results[name])[0], hr_u8)
        print(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['L_shift']:.3f} | {m['ab_shift']:.3f} | "
              f"{timing.get(name, 0.0):.1f} |")
    print(f"wrote {a.output}")
    return 0


def cmd_eval(a) -> int:
    from .data import load_source
    from .evaluate import EvalSettings, evaluate, markdown_table, summarize

    images = load_source(a.images if a.images else "heldout")
    dev = _device(a.device)
    model = load_model(a.model, dev)
    settings = EvalSettings(steps=a.steps, sampler=a.sampler, lower_bounds=tuple(a.lower_bounds),
                            attentions=tuple(a.attention), seed=a.seed,
                            max_size=a.max_size if a.max_size > 0 else None, progress=not a.quiet,
                            lpips=tuple(a.lpips) if a.lpips else None)
    table = markdown_table(summarize(evaluate(model, images, settings)))
    if a.output:
        from ._io import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(table + "\n")

        atomic_write(a.output, write)
    print(table)
    return 0


def cmd_train(a) -> int:
    from .train import TrainConfig, train_main

    cfg = TrainConfig.load(a.config)
    out = a.out or os.path.join("runs", cfg.name)
    command = "yoda " + " ".join(a.argv)
    s = train_main(a.config, out, steps=a.steps, device=a.device, minutes=a.minutes, progress=not a.quiet,
                   command=command, weights_name=a.weights_name, data_dir=a.data_dir)
    print(f"trained {s['steps']} steps in {s['seconds']:.1f} s -> {s['weights']}")
    return 0


def cmd_plot(a) -> int:
    from .train import plot_logs

    labels = a.labels or [Path(p).parent.name or Path(p).stem for p in a.logs]
    if Path(a.output).suffix.lower() != ".png":
        raise UserError(f"-o {a.output} must end in .png")
    plot_logs(a.logs, labels, a.output)
    print(f"wrote {a.output}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------------------
def _sampling_args(p, steps: int, sampler: str) -> None:
    p.add_argument("--model", default="default", help="'default' (embedded x4 model) or a yoda model file")
    p.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps})")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default=sampler)
    p.add_argument("--lower-bound", type=float, default=0.6, help="l of the mask schedule tau = t/T - l")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="yoda", description="YODA: attention-guided diffusion super-resolution")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("upscale", help="super-resolve PNG/JPEG images")
    p.add_argument("inputs", nargs="+", metavar="IN")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--attention", default="edge",
                   help="edge | gaussian | sift | dino-vits8:PATH | dino-resnet50:PATH | none (plain sampling)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    _sampling_args(p, 50, "ddim")
    p.set_defaults(fn=cmd_upscale)

    p = sub.add_parser("attention", help="draw an image's attention map and mask growth")
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--attention", default="edge")
    p.add_argument("--lower-bound", type=float, default=0.6)
    p.add_argument("--T", type=int, default=1000, help="training steps T of the mask schedule")
    p.set_defaults(fn=cmd_attention)

    p = sub.add_parser("demo", help="plain vs YODA on a held-out image, one comparison picture")
    p.add_argument("-o", "--output", default="demo.png")
    p.add_argument("--image", default="astronaut", help="a held-out image (astronaut, coffee, rocket, chelsea)")
    p.add_argument("--lr-size", type=int, default=64, help="LR crop size (HR = scale * this)")
    p.add_argument("--attention", default="edge")
    _sampling_args(p, 20, "ddim")  # ~40 s per sampling run at 256x256 on 2 free CPU cores
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("eval", help="PSNR / SSIM / colour shift table, plain vs YODA")
    p.add_argument("--images", default=None, help="folder of HR PNG/JPEG (default: the held-out set)")
    p.add_argument("--lower-bounds", type=float, nargs="+", default=[0.4, 0.6, 0.8])
    p.add_argument("--attention", nargs="+", default=["edge", "gaussian"])
    p.add_argument("--max-size", type=int, default=128, help="centre-crop HR to at most this (0: full size)")
    p.add_argument("-o", "--output", default=None, help="also write the table to this file")
    p.add_argument("--lpips", nargs=2, metavar=("BACKBONE", "LIN"), default=None,
                   help="add an LPIPS column from local files: torchvision vgg16 weights and the lpips "
                        "package's v0.1 vgg.pth linear heads (nothing is downloaded)")
    _sampling_args(p, 20, "ddim")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("train", help="train a model from a JSON config")
    p.add_argument("--config", required=True)
    p.add_argument("--out", default=None, help="output folder (default runs/<name>); resumes if it has a checkpoint")
    p.add_argument("--steps", type=int, default=None, help="total steps (overrides the config)")
    p.add_argument("--minutes", type=float, default=None, help="stop (and save) after this much wall time")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--weights-name", default="model.safetensors", help="file name of the exported weights")
    p.add_argument("--data-dir", default=None,
                   help="folder from `python -m yoda.data export` used instead of scikit-image's bundled images")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("plot", help="loss curves + validation PSNR of training logs in one PNG")
    p.add_argument("logs", nargs="+", metavar="LOG.csv")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--labels", nargs="+", default=None)
    p.set_defaults(fn=cmd_plot)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed one usage line + error
        return int(e.code or 0)
    a.argv = argv
    if getattr(a, "attention", None) in ("none", "plain"):
        a.attention = None
    try:
        if getattr(a, "steps", None) is not None and a.steps < 1:
            raise UserError(f"--steps must be >= 1, got {a.steps}")
        return a.fn(a)
    except (ValueError, TypeError, ImportError, RuntimeError, OSError) as e:  # one line, no traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"yoda: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("yoda: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m yoda.cli ...
    sys.exit(main())
