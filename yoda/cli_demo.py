"""``yoda demo``: one image of scikit-image's held out from training, plain against YODA, as a figure that fits
README's column (LR, bicubic, HR; plain, YODA, the map; their error maps; the map over the LR, the masks, the key)
and a table of their scores."""

from __future__ import annotations

import time

import numpy as np

from .cli_models import (attention_extractor, bars, check_output_option, cli_device, cli_model,
                         save_figure, upscale_tensor, written_or_said)
from .cli_upscale import checked_steps
from .console import say
from .errors import UserError, printable
from .errors import user_input as _user_input


def cmd_demo(a) -> int:
    import torch
    from PIL import Image

    from . import drawing
    from .adapters import upsample
    from .attention.figure import colormap, colour_key, growing_masks, percent_label, ratio_text
    from .sampling.prepare import resolve_attention
    from .data import HELD_OUT, builtin_image, make_lr
    from .evaluate import metrics
    from .images import from_uint8, to_uint8
    from .masks import active, active_fraction

    if a.image not in HELD_OUT:
        raise UserError(f"--image must be one of the images no model here was trained on ({', '.join(HELD_OUT)}), "
                        f"got {a.image!r}")
    if a.lr_size < 1:
        raise UserError(f"--lr-size must be >= 1, got {a.lr_size}")
    check_output_option(a.output)
    dev = cli_device(a.device)
    model, ad, given = cli_model(a, dev)
    s = ad.scale
    full = builtin_image(a.image)
    size = a.lr_size * s
    H, W = full.shape[:2]
    if H < size or W < size:
        raise UserError(f"--lr-size {a.lr_size} is too large for {a.image} ({W}x{H}) at x{s}: at most "
                        f"{min(H, W) // s}")
    y, x = (H - size) // 2, (W - size) // 2
    hr_u8 = np.ascontiguousarray(full[y : y + size, x : x + size])
    hr = from_uint8(hr_u8).to(dev)
    lr = make_lr(hr, s)
    extractor = attention_extractor(a.attention)  # before the note on YODA's steps: a bad name makes it moot
    with _user_input():  # YODA's steps as upscale takes them
        steps = {"plain": a.steps, "YODA": checked_steps(ad, a, dev, given, yoda=True, what="YODA")}
    with _user_input():  # drawn: the map the sampler uses (at HR, normalised after the resize; upscale_tensor pads it)
        A = resolve_attention(extractor, lr, (size, size))
    t0 = time.perf_counter()
    results = {"bicubic": upsample(lr, s)}
    timing, visited = {"bicubic": time.perf_counter() - t0}, []  # visited: the YODA run's (DESIGN's t, tau)
    with torch.no_grad():  # untimed: the first run pays one-time set-up (allocator, kernels), not plain's time
        upscale_tensor(model, lr, attention=None, steps=1, sampler=a.sampler, eta=0.0, lower_bound=1.0,
                       seed=a.seed, progress=False)
    for name, attn in (("plain", None), ("YODA", extractor)):
        t0 = time.perf_counter()
        record = (lambda d: visited.append((d["t"] + 1, d["tau"]))) if attn is not None else None
        with torch.no_grad():
            results[name] = upscale_tensor(model, lr, attention=attn, steps=steps[name], sampler=a.sampler, eta=0.0,
                                           lower_bound=a.lower_bound, seed=a.seed, progress=bars(a),
                                           callback=record)
        timing[name] = time.perf_counter() - t0
    scores = {name: metrics(to_uint8(results[name])[0], hr_u8) for name in ("bicubic", "plain", "YODA")}
    # LR (nearest), bicubic, HR; plain and YODA (with PSNR / SSIM) and the attention map; under them their error
    # maps; then the map over the LR, the masks of the YODA run's steps (5 at most) and the key; in lines as wide as
    # README shows (3 panels of 256 px). Small crops are enlarged (nearest, by a whole factor) to panels of at least
    # 160 px: the labels fit
    panel = size * -(-160 // size)
    big = lambda im: im.resize((panel, panel), Image.Resampling.NEAREST) if panel > size else im  # noqa: E731
    lr_big = Image.fromarray(to_uint8(lr)[0]).resize((panel, panel), Image.Resampling.NEAREST)
    scored = {name: (f"{name}  {scores[name]['psnr']:.2f} dB, SSIM {scores[name]['ssim']:.3f}",
                     big(Image.fromarray(to_uint8(results[name])[0]))) for name in ("bicubic", "plain", "YODA")}
    heat = big(Image.fromarray(colormap(A[0, 0].clamp(0, 1).cpu().numpy())).resize((size, size),
                                                                                   Image.Resampling.BILINEAR))
    top = [("LR (nearest)", lr_big), scored["bicubic"], ("HR", big(Image.fromarray(hr_u8)))]
    sampled = [scored["plain"], scored["YODA"], (f"attention A ({a.attention.split(':')[0]})", heat)]
    ts = growing_masks(visited, 5)  # as `yoda attention` picks them: the growing ones, then the first full one
    bottom = [("A over LR", Image.blend(lr_big.convert("RGB"), heat, 0.5))]
    for t, tau in ts:  # the mask the sampler used at step t (white: refined), its share of the picture
        m = active(A[0, 0], tau).cpu()
        im = big(Image.fromarray(np.where(m.numpy(), 255, 0).astype(np.uint8)).convert("RGB"))
        bottom.append((f"M(t={t}): {percent_label(int(m.sum()), m.numel())} refined", im))
    bottom.append(("key", colour_key(panel, panel, ts)))  # colour -> A, with the drawn masks' thresholds
    sr_u8 = {name: to_uint8(results[name])[0] for name in ("plain", "YODA")}
    errors = []  # where each errs, where they differ: under plain, YODA and the map, under their own caption
    for label, one, other in (("plain - HR", sr_u8["plain"], hr_u8), ("YODA - HR", sr_u8["YODA"], hr_u8),
                              ("YODA - plain", sr_u8["YODA"], sr_u8["plain"])):
        err = drawing.error_map(one, other)
        errors.append((f"|{label}|, mean {err.mean():.2f}", big(Image.fromarray(drawing.error_image(err)))))
    ratio = float(sum(active_fraction(A, tau) for _, tau in visited)) / len(visited)
    # against a plain run of YODA's own steps (the paper's Fig. 3); where the plain column took fewer, what YODA's
    # run did against it too (0.59 of the run read as "59% of plain's work" where it was 119%)
    n_plain, n_yoda = steps["plain"], len(visited)
    of = "of the run" if n_yoda == n_plain else f"vs plain at its {n_yoda} steps"
    against = "" if n_yoda == n_plain else f", {ratio * n_yoda / n_plain:.2f}x the plain column's updates"
    plural = lambda n: f"{n} step{'s' if n != 1 else ''}"  # noqa: E731
    steps = plural(steps["plain"]) + (f" (YODA {plural(steps['YODA'])})" if steps["YODA"] != steps["plain"] else "")
    title = (f"yoda demo: {a.image}, x{s} ({a.lr_size} -> {size} px), model {a.model}, {a.sampler} {steps}, "
             f"seed {a.seed}")
    caption = (f"YODA: {a.attention.split(':')[0]} attention, l = {a.lower_bound:g}; masks M(t) = "
               f"1[A >= t/T - {a.lower_bound:g}] at {'its' if len(ts) == len(visited) else f'{len(ts)} of its'} "
               f"{len(visited)} step{'s' if len(visited) != 1 else ''} (white: refined, the rest stays bicubic); "
               f"{ratio_text(ratio, of)}{against}")
    key = f"|a - b|: mean over RGB, 8-bit levels, black 0, white >= {drawing.ERROR_WHITE}"
    canvas = drawing.panel_grid(title, [(None, top), (None, sampled), (key, errors), (caption, bottom)], panel,
                                at_least=3)  # (panels over 285 px: a figure wider than README's, pixels 1:1)
    lines = [f"demo: {a.image}, LR {a.lr_size}x{a.lr_size} -> {size}x{size}, {a.sampler} {steps}, "
             f"attention {a.attention}, lower bound {a.lower_bound:g}",
             "| method | PSNR (dB) | SSIM | L shift | ab shift | time (s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['L_shift']:.3f} | {m['ab_shift']:.3f} | "
              f"{timing[name]:.1f} |" for name, m in scores.items()]
    table = "\n".join(lines)  # the scores, said only here: `> /dev/full` is an error
    written_or_said(lambda: save_figure(canvas, a.output), lambda: say(table, full_ok=False))
    say(table, full_ok=False)
    say(f"wrote {printable(a.output)}")
    return 0
