"""Small-batch training stability (issue 9, item 5): plain vs YODA training at batch 1, 2 and 4, 3 seeds each.

The claim under test (DESIGN.md §7): training with YODA masks (LossConfig.mask_input: masked input,
LossConfig.mask_loss: loss averaged over the active pixels only) is steadier with small batches. This script
derives 18 configs from yoda/configs/default_x4.json that differ only in a tiny SRDiff model, small crops,
frequent validation, the batch size, the two YODA switches and the seed; it trains them one after the other
through the `yoda train` command line (equal steps for all), then reads their log.csv files and writes a
markdown report and one figure: by default over the committed benchmarks/STABILITY.md and
benchmarks/figures/stability.png (so the defaults regenerate them; give -o and --figure to write elsewhere).

    python benchmarks/stability.py                        # train (resumes: finished runs are skipped) + report
    python benchmarks/stability.py --report-only          # only re-read the logs and rewrite the report
    python benchmarks/stability.py --data /tmp/photos --runs /tmp/stability_runs --steps 1200 \\
        -o benchmarks/STABILITY.md --figure benchmarks/figures/stability.png
    mkdir /tmp/yoda_snap && cp -a yoda yoda_kernels /tmp/yoda_snap/ \\
        && python benchmarks/stability.py --code /tmp/yoda_snap   # as benchmarks/STABILITY.md was made

DATA is the folder of `yoda data build` (train/ and heldout/). Each run gets OMP_NUM_THREADS=1 and
`nice -n 15`, so it shares a loaded machine politely. `--code DIR` runs `python -m yoda` from DIR, a frozen
copy of yoda/ and yoda_kernels/ (with its compiled _C), so edits made in the checkout while the study runs
(about 25 minutes) cannot break or change it. A "## Conclusion" section already in the output file is
kept when the report is rewritten (the conclusion is written by hand after looking at the numbers).

Per cell (batch x training) the report gives the final validation PSNR (EMA weights, DDIM, plain and YODA
sampling) as mean +- sample std (ddof 1) over the seeds, its gain over bicubic on the same crops, the
paired YODA - plain difference per seed (same seed: same initial weights, training crops, noise draws and
validation crops), and the loss-spike count (definition: `spike_definition`).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY_MODEL = {"kind": "srdiff", "hidden_size": 8, "dim_mults": [1, 2], "rrdb_num_block": 2, "rrdb_num_feat": 8,
              "sr_scale": 4}  # 2 ** (len(dim_mults) - 1) = 2 must divide the crops
BATCHES = (1, 2, 4)
SEEDS = (0, 1, 2)
ARMS = ("plain", "yoda")  # yoda: loss.mask_input = loss.mask_loss = True
COLOURS = {"plain": (31, 119, 180), "yoda": (214, 39, 40)}
BAND_ALPHA = 60
LINE_WIDTH = {"plain": 5, "yoda": 2}  # the YODA line is drawn on top of a wider plain line: both stay visible


def spike_definition(window: int, factor: float, warmup: int, log_every: int) -> str:
    return (f"a logged loss (the mean over its {log_every} steps) above {factor:g} x the median of the "
            f"{window} logged losses before it, counted at logged steps after the {warmup}-step learning-rate "
            f"warm-up that have {window} logged losses before them")


def run_name(batch: int, arm: str, seed: int) -> str:
    return f"b{batch}_{arm}_s{seed}"


def study_configs(a) -> dict[str, dict]:
    """The 18 configs: yoda/configs/default_x4.json with the study's settings."""
    with open(os.path.join(ROOT, "yoda", "configs", "default_x4.json"), encoding="utf-8") as f:
        base = json.load(f)
    base["model"] = dict(TINY_MODEL)
    base["data"].update(crop=a.crop, val_crop=a.val_crop, val_crops=a.val_crops)
    base.update(steps=a.steps, log_every=a.log_every, val_every=a.val_every, val_steps=a.val_steps)
    out = {}
    for batch in BATCHES:
        for arm in ARMS:
            for seed in SEEDS:
                cfg = copy.deepcopy(base)
                cfg["name"] = run_name(batch, arm, seed)
                cfg["loss"].update(mask_input=arm == "yoda", mask_loss=arm == "yoda")
                cfg.update(batch=batch, seed=seed)
                out[cfg["name"]] = cfg
    return out


def read_log(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def finished(path: str, steps: int) -> bool:
    rows = read_log(path)
    return bool(rows) and int(rows[-1]["step"]) >= steps


def train_all(configs: dict[str, dict], a) -> None:
    """Run every config whose log lacks the final step, one at a time, through `yoda train`."""
    os.makedirs(a.runs, exist_ok=True)
    walls_path = os.path.join(a.runs, "wall_s.json")
    walls = load_json(walls_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=a.code)
    for k, (name, cfg) in enumerate(configs.items(), 1):
        path, out = os.path.join(a.runs, f"{name}.json"), os.path.join(a.runs, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if json.load(f) != cfg:
                    sys.exit(f"{path} holds other settings than this invocation: use another --runs folder")
        if finished(os.path.join(out, "log.csv"), a.steps):
            print(f"[{k}/{len(configs)}] {name}: done, skipped", flush=True)
            continue
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        cmd = ["nice", "-n", "15", sys.executable, "-m", "yoda", "train", "--config", path, "--out", out,
               "--data-dir", a.data, "--device", "cpu", "-q"]
        t0 = time.perf_counter()
        if subprocess.run(cmd, env=env, cwd=a.code).returncode:  # the child has printed its error
            sys.exit(2)
        walls[name] = walls.get(name, 0.0) + time.perf_counter() - t0
        with open(walls_path, "w", encoding="utf-8") as f:
            json.dump(walls, f, indent=2)
        print(f"[{k}/{len(configs)}] {name}: {walls[name]:.0f} s", flush=True)


def count_spikes(rows: list[dict], window: int, factor: float, warmup: int) -> int:
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    return sum(1 for i in range(window, len(loss))
               if steps[i] > warmup and loss[i] > factor * statistics.median(loss[i - window:i]))


def loss_cv(rows: list[dict], warmup: int) -> float:
    """Coefficient of variation (std / mean) of the logged losses after the warm-up: how noisy the loss is,
    free of its scale (the YODA loss, averaged over the active pixels, has another scale than the plain one)."""
    loss = [float(r["loss"]) for r in rows if int(r["step"]) > warmup]
    return statistics.stdev(loss) / statistics.fmean(loss) if len(loss) > 1 else float("nan")


def min_steps(warmup: int, log_every: int, val_every: int) -> int | None:
    """The fewest steps whose log has 2 losses after the warm-up (loss_cv needs them): the trainer logs every
    log_every and every val_every steps and the last step. None if only the last step is logged."""
    firsts = [(warmup // k + 1) * k for k in (log_every, val_every) if k > 0]
    return min(firsts) + 1 if firsts else None


def val_series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key, "") != ""]
    return [s for s, _ in pts], [v for _, v in pts]


def bicubic_psnr(data: str, val_crop: int, val_crops: int, scale: int, seed: int) -> float:
    """Mean PSNR of bicubic up(lr) on the validation crops of a run with this seed (the trainer draws them
    with yoda.data.fixed_crops(..., seed=seed + 1)); a residual model that predicts 0 scores exactly this."""
    import torch

    from yoda.adapters import upsample
    from yoda.data import fixed_crops, load_source, make_lr
    from yoda.images import quantize_u8

    hr = fixed_crops(load_source(os.path.join(data, "heldout"), val_crop), val_crops, val_crop, seed=seed + 1)
    sr = upsample(make_lr(hr, scale), scale)
    mse = (quantize_u8(sr).double() - quantize_u8(hr).double()).pow(2).flatten(1).mean(dim=1)
    return float((10.0 * torch.log10(255.0**2 / mse)).mean())


def masked_fraction(data: str, crop: int, scale: int, attention: str, lower_bound: float, T: int,
                    n: int = 256) -> float:
    """The share of the loss terms (pixel, step t) that YODA training drops, averaged over t = 1..T and n
    training crops: pixels with A < t/T - lower_bound (A as the trainer makes it: the attention of the LR crop,
    resized bilinearly to the HR grid)."""
    import torch
    import torch.nn.functional as F

    from yoda import attention as attn
    from yoda.data import fixed_crops, load_source, make_lr

    with torch.no_grad():
        A = attn.get(attention)(make_lr(fixed_crops(load_source(os.path.join(data, "train"), crop), n, crop), scale))
        A = F.interpolate(A.float(), size=(crop, crop), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
        return float(torch.stack([(A < t / T - lower_bound).float().mean() for t in range(1, T + 1)]).mean())


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def pm(values: list[float], digits: int = 2) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def analyse(configs: dict[str, dict], a) -> dict:
    """Per run: final PSNRs, gain over bicubic, spike count, validation curve."""
    scale = next(iter(configs.values()))["data"]["scale"]
    bicubic = {s: bicubic_psnr(a.data, a.val_crop, a.val_crops, scale, s) for s in SEEDS}
    runs = {}
    for name, cfg in configs.items():
        rows = read_log(os.path.join(a.runs, name, "log.csv"))
        if not rows or int(rows[-1]["step"]) < a.steps:
            sys.exit(f"{name}: log.csv does not reach step {a.steps}; run without --report-only first")
        last = rows[-1]
        steps, plain = val_series(rows, "val_psnr_plain")
        runs[name] = {
            "psnr_plain": float(last["val_psnr_plain"]), "psnr_yoda": float(last["val_psnr_yoda"]),
            "gain": float(last["val_psnr_plain"]) - bicubic[cfg["seed"]],
            "spikes": count_spikes(rows, a.spike_window, a.spike_factor, cfg["warmup"]),
            "loss_cv": loss_cv(rows, cfg["warmup"]),
            "train_s": float(last["time"]), "val_steps": steps, "val_gain": [v - bicubic[cfg["seed"]] for v in plain],
            "final_loss": float(last["loss"]),
        }
    cfg0 = next(iter(configs.values()))
    masked = masked_fraction(a.data, a.crop, scale, cfg0["attention"], cfg0["loss"]["lower_bound"],
                             cfg0["schedule"]["T"])
    return {"bicubic": bicubic, "masked_fraction": masked, "runs": runs}


def blend(under: tuple, colour: tuple) -> tuple:
    """``colour`` at opacity BAND_ALPHA over ``under`` (the colour a band gets)."""
    return tuple(round(u + (c - u) * BAND_ALPHA / 255) for u, c in zip(under, colour))


def draw_figure(res: dict, a, path: str) -> None:
    """Validation PSNR gain over bicubic vs step, one panel per batch size: mean over seeds (line) and
    min-max over seeds (band), plain vs YODA training."""
    from PIL import Image, ImageDraw

    from yoda import drawing  # the project's Pillow plotting helpers

    runs = res["runs"]
    pw, ph, left, top = 400, 300, 80, 70
    canvas = Image.new("RGB", (left + len(BATCHES) * (pw + left) - 10, top + ph + 95), "white")
    draw, font = ImageDraw.Draw(canvas), drawing.font(13)
    heading = (f"Validation PSNR gain over bicubic (EMA weights, plain DDIM {a.val_steps} steps, {a.val_crops} "
               f"held-out {a.val_crop}x{a.val_crop} crops): mean over {len(SEEDS)} seeds, band = min-max")
    drawing.title(canvas, draw, heading, drawing.font(15), y=8)
    values = [v for r in runs.values() for v in r["val_gain"]]
    lo, hi = min(values + [0.0]), max(values + [0.0])
    ylim = (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    for k, batch in enumerate(BATCHES):
        x0 = left + k * (pw + left)
        ax = drawing.Axes(canvas, (x0, top, x0 + pw, top + ph), (0, a.steps), ylim, font)
        ax.frame(f"batch {batch}", "training step", "PSNR - bicubic (dB)")
        ax.line([0, a.steps], [0.0, 0.0], (110, 110, 110), width=1, dashed=True)
        for arm in ARMS:
            curves = [runs[run_name(batch, arm, s)] for s in SEEDS]
            steps = curves[0]["val_steps"]
            cols = list(zip(*(c["val_gain"] for c in curves)))
            band = ([(ax.fx(s), ax.fy(max(c))) for s, c in zip(steps, cols)]
                    + [(ax.fx(s), ax.fy(min(c))) for s, c in reversed(list(zip(steps, cols)))])
            layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
            ImageDraw.Draw(layer).polygon(band, fill=COLOURS[arm] + (BAND_ALPHA,))
            canvas.paste(layer, (0, 0), layer)
            ax.line(steps, [statistics.fmean(c) for c in cols], COLOURS[arm], width=LINE_WIDTH[arm])
    plain_band, yoda_band = blend((255, 255, 255), COLOURS["plain"]), blend((255, 255, 255), COLOURS["yoda"])
    drawing.legend(draw, left, top + ph + 58, [("plain training (wide line)", COLOURS["plain"], "line"),
                                               ("YODA training (masked input + masked loss)", COLOURS["yoda"], "line"),
                                               ("bicubic (0 dB)", (110, 110, 110), "dashed"),
                                               ("min-max plain", plain_band, "bar"),
                                               ("min-max YODA", yoda_band, "bar"),
                                               ("both (overlap)", blend(plain_band, COLOURS["yoda"]), "bar")], font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)


def machine() -> str:
    cpu = platform.machine()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def report(configs: dict[str, dict], res: dict, a, wall: dict) -> str:
    import torch

    runs, cfg0 = res["runs"], next(iter(configs.values()))
    spike_def = spike_definition(a.spike_window, a.spike_factor, cfg0["warmup"], a.log_every)
    L = ["# Small-batch training stability: plain vs YODA training", "",
         "Issue 9, item 5: does training with YODA masks (masked input + loss over the active pixels only, "
         "DESIGN.md §7) steady small-batch training? Written by `benchmarks/stability.py`.", "",
         "## Settings", "",
         f"- machine: {machine()}; torch {torch.__version__}, Python {platform.python_version()}; each run alone, "
         "`nice -n 15`, OMP_NUM_THREADS=1, on a machine shared with other training jobs",
         f"- wall time: {sum(wall.values()):.0f} s for the {len(configs)} runs (`yoda train` processes, start-up "
         f"included); training loops alone (log.csv time): {sum(r['train_s'] for r in runs.values()):.0f} s",
         f"- code: `python -m yoda train` run from {a.code}" + (" (a frozen copy of the checkout)" if
                                                                os.path.abspath(a.code) != ROOT else ""),
         f"- runs: batch ∈ {list(BATCHES)} × {{plain, YODA}} training × seed ∈ {list(SEEDS)}, "
         f"{a.steps} steps each (equal steps, so batch 4 sees 4× the crops of batch 1)",
         f"- model: `{json.dumps(TINY_MODEL)}`",
         f"- data: `{json.dumps(cfg0['data'])}` with `--data-dir {a.data}` (train/ and heldout/ of `yoda data build`)",
         f"- loss: `{json.dumps(cfg0['loss'])}`; YODA runs set mask_input = mask_loss = true; masks from the "
         f"`{cfg0['attention']}` attention, lower bound {cfg0['loss']['lower_bound']}: a step t only masks when "
         f"t/T > {cfg0['loss']['lower_bound']}, and over all t YODA training drops "
         f"{100 * res['masked_fraction']:.1f} % of the (pixel, t) loss terms (256 training crops)",
         f"- schedule: `{json.dumps(cfg0['schedule'])}`; optimiser AdamW lr {cfg0['lr']}, betas {cfg0['betas']}, "
         f"warm-up {cfg0['warmup']} steps, grad clip {cfg0['grad_clip']}, EMA decay {cfg0['ema_decay']}",
         f"- validation: every {a.val_every} steps, EMA weights, DDIM {a.val_steps} steps, {a.val_crops} held-out "
         f"{a.val_crop}² crops drawn with seed + 1 (so each seed has its own crops; plain and YODA runs of one "
         "seed share them), PSNR on 8-bit pixels; columns val_psnr_plain (plain sampling) and val_psnr_yoda "
         f"(YODA sampling, lower bound {cfg0['loss']['lower_bound']})",
         "- bicubic on the same crops: " + ", ".join(f"seed {s}: {v:.2f} dB" for s, v in res["bicubic"].items()),
         f"- loss spike: {spike_def}; loss logged every {a.log_every} steps; loss CV: std / mean of the logged "
         f"losses after the warm-up (scale-free, so plain and YODA losses compare)",
         "- ± is the sample standard deviation (ddof 1) over the seeds; it includes the seeds' different "
         "validation crops, which the gain over bicubic and the paired difference remove", "",
         "## Final validation PSNR and loss spikes", "",
         "| batch | training | PSNR, plain sampling (dB) | PSNR, YODA sampling (dB) | gain over bicubic (dB) "
         "| std of gain over seeds (dB) | loss spikes: total (per seed) | loss CV (mean over seeds) |",
         "|---|---|---|---|---|---|---|---|"]
    for batch in BATCHES:
        for arm in ARMS:
            rs = [runs[run_name(batch, arm, s)] for s in SEEDS]
            spikes = [r["spikes"] for r in rs]
            L.append(f"| {batch} | {'YODA' if arm == 'yoda' else 'plain'} | {pm([r['psnr_plain'] for r in rs])} "
                     f"| {pm([r['psnr_yoda'] for r in rs])} | {pm([r['gain'] for r in rs])} "
                     f"| {mean_std([r['gain'] for r in rs])[1]:.3f} "
                     f"| {sum(spikes)} ({'/'.join(map(str, spikes))}) "
                     f"| {statistics.fmean(r['loss_cv'] for r in rs):.3f} |")
    L += ["", "## Paired difference, YODA − plain training (same seed)", "",
          "| batch | Δ PSNR, plain sampling (dB) | Δ PSNR, YODA sampling (dB) | per seed, plain sampling (dB) |",
          "|---|---|---|---|"]
    for batch in BATCHES:
        d = {k: [runs[run_name(batch, "yoda", s)][k] - runs[run_name(batch, "plain", s)][k] for s in SEEDS]
             for k in ("psnr_plain", "psnr_yoda")}
        L.append(f"| {batch} | {pm(d['psnr_plain'], 3)} | {pm(d['psnr_yoda'], 3)} "
                 f"| {' / '.join(f'{v:+.3f}' for v in d['psnr_plain'])} |")
    L += ["", "## Runs", "",
          "| run | final PSNR plain / YODA sampling (dB) | gain over bicubic (dB) | best gain (dB) at step "
          "| final logged loss | spikes | training loop (s) |", "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        best = max(range(len(r["val_gain"])), key=r["val_gain"].__getitem__)
        L.append(f"| {name} | {r['psnr_plain']:.2f} / {r['psnr_yoda']:.2f} | {r['gain']:+.2f} "
                 f"| {r['val_gain'][best]:+.2f} at {r['val_steps'][best]} | {r['final_loss']:.4g} | {r['spikes']} "
                 f"| {r['train_s']:.0f} |")
    L += ["", "The loss of YODA runs is averaged over the active pixels only, so its scale differs from the "
          "plain loss; the spike rule is relative to each run's own recent losses.", "",
          f"![validation PSNR vs step]({os.path.relpath(a.figure, os.path.dirname(os.path.abspath(a.output)))})",
          ""]
    return "\n".join(L)


def kept_conclusion(path: str) -> str:
    """The "## Conclusion" section of an existing report (to the end of the file), or ""."""
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    i = text.find("\n## Conclusion")
    return text[i + 1:] if i >= 0 else ""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/photos", help="folder of `yoda data build` (train/, heldout/)")
    p.add_argument("--runs", default="/tmp/stability_runs", help="folder of the 18 run folders and configs")
    p.add_argument("-o", "--output", default=os.path.join(ROOT, "benchmarks", "STABILITY.md"))
    p.add_argument("--figure", default=os.path.join(ROOT, "benchmarks", "figures", "stability.png"))
    p.add_argument("--steps", type=int, default=1200, help="training steps of every run")
    p.add_argument("--crop", type=int, default=32, help="HR training crop (multiple of 4 and of 2)")
    p.add_argument("--val-crop", type=int, default=64)
    p.add_argument("--val-crops", type=int, default=8)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--val-steps", type=int, default=10, help="DDIM steps of validation sampling")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--spike-window", type=int, default=10, help="logged losses in the running median")
    p.add_argument("--spike-factor", type=float, default=3.0)
    p.add_argument("--code", default=ROOT, help="folder holding the yoda package that trains (default: this checkout)")
    p.add_argument("--report-only", action="store_true", help="do not train; read the logs that exist")
    a = p.parse_args()
    warmup = next(iter(study_configs(a).values()))["warmup"]
    need = min_steps(warmup, a.log_every, a.val_every)
    if need is None or a.steps < need:
        p.error(f"--steps {a.steps} logs fewer than 2 losses after the {warmup}-step warm-up (the loss CV needs 2): "
                + (f"the smallest valid --steps is {need} with --log-every {a.log_every} and --val-every "
                   f"{a.val_every}" if need else "set --log-every or --val-every above 0"))
    return a


def main() -> None:
    a = parse_args()
    sys.path.insert(0, a.code)
    configs = study_configs(a)
    if not a.report_only:
        train_all(configs, a)
    from yoda.images import DataError

    try:
        res = analyse(configs, a)
    except DataError as e:  # the held-out photographs of the bicubic PSNRs: one line, not a traceback
        print(f"stability.py: error: --data {a.data}: {e}", file=sys.stderr)
        sys.exit(2)
    draw_figure(res, a, a.figure)
    text = report(configs, res, a, load_json(os.path.join(a.runs, "wall_s.json")))
    print(text)
    conclusion = kept_conclusion(a.output)
    with open(a.output, "w", encoding="utf-8") as f:
        f.write(text + ("\n" + conclusion if conclusion else ""))
    print(f"wrote {a.output} and {a.figure}")


if __name__ == "__main__":
    main()
