"""The quality grid of benchmarks/QUALITY.md: {pixel SR3, residual SRDiff} x {eps, v, x0} small models trained
for the same wall time side by side, then sampled with {DDPM, DDIM eta 0, DDIM eta 1} x {plain, YODA}.

    python benchmarks/quality_grid.py train --data DATA --runs RUNS --minutes 25
    python benchmarks/quality_grid.py eval  --data DATA --runs RUNS -o RUNS/grid.json [--steps 1 5 20]
    python benchmarks/quality_grid.py table RUNS/grid.json          # the markdown table of QUALITY.md

DATA is the folder of `yoda data build`. All six runs start at once with one thread each, so they share the
machine alike (the same wall time is the same compute budget); their configs differ from
yoda/configs/default_x4.json only in the model (space), the prediction and the noise level. A run continues
with `yoda train --config RUNS/NAME.json --out RUNS/NAME --data-dir DATA` and a larger step count; only
residual_x0 has the default model's config (the residual SRDiff predicting x0, trained with the L2 loss).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)



def _config(name: str) -> dict:
    with open(os.path.join(ROOT, "yoda", "configs", name), encoding="utf-8") as f:
        return json.load(f)


def grid_configs() -> dict[str, dict]:
    """The six run configs: default_x4.json with its SRDiff (0.72 M parameters) or a small SR3 UNet (0.69 M:
    compare_plain.json's model with inner_channel 16, norm_groups 8), times the three predictions."""
    base = _config("default_x4.json")
    srdiff_small = base["model"]
    sr3 = dict(_config("compare_plain.json")["model"], inner_channel=16, norm_groups=8)
    out = {}
    for space, model in (("pixel", sr3), ("residual", srdiff_small)):
        for target in ("eps", "v", "x0"):
            cfg = copy.deepcopy(base)
            cfg["name"] = f"{space}_{target}"
            cfg["model"] = copy.deepcopy(model)
            cfg["loss"].update(space=space, target=target,
                               noise_level="continuous" if space == "pixel" else "discrete")
            out[cfg["name"]] = cfg
    return out


def cmd_train(a) -> None:
    os.makedirs(a.runs, exist_ok=True)
    procs = []
    for name, cfg in grid_configs().items():
        d = os.path.join(a.runs, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(a.runs, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT)
        cmd = [sys.executable, "-m", "yoda", "train", "--config", path, "--out", d, "--data-dir", a.data,
               "--minutes", str(a.minutes), "-q"]
        log = open(os.path.join(a.runs, f"{name}.out"), "w")
        procs.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    t0 = time.time()
    for name, p, log in procs:
        rc = p.wait()
        log.close()
        print(f"{name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)


SAMPLERS = {"ddpm": ("ddpm", 0.0), "ddim0": ("ddim", 0.0), "ddim1": ("ddim", 1.0),
            # the sigma-space solvers (karras sigmas, eta at its default: 1 for the ancestral and SDE solvers)
            **{name: (name, None) for name in ("euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde",
                                               "dpm_2", "dpm_2_a", "dpmpp_2s_a")}}


def cmd_eval(a) -> None:
    """Every (model, sampler, steps) cell: bicubic, plain and the YODA variants on the held-out photographs.
    Results accumulate in the JSON file (a rerun skips the cells it already has)."""
    import torch

    from yoda import load
    from yoda.data import load_source
    from yoda.evaluate import EvalSettings, evaluate, summarize

    torch.set_num_threads(a.threads)
    images = load_source(os.path.join(a.data, "heldout"))
    results = {}
    if os.path.exists(a.output):
        with open(a.output, encoding="utf-8") as f:
            results = json.load(f)
    for name in a.models or list(grid_configs()):
        path = name if name.endswith(".safetensors") else os.path.join(a.runs, name, "model.safetensors")
        model = load("yoda", path).eval()
        for sname in a.samplers:
            for steps in a.steps:
                key = f"{os.path.basename(name)}/{sname}/{steps}"
                if key in results:
                    continue
                sampler, eta = SAMPLERS[sname]
                t0 = time.time()
                s = EvalSettings(steps=steps, sampler=sampler, eta=eta, lower_bounds=tuple(a.lower_bounds),
                                 attentions=tuple(a.attention), max_size=a.size, seed=0)
                with torch.inference_mode():
                    rows = evaluate(model, images, s)
                results[key] = {"size": a.size, "images": len(images), "rows": summarize(rows)}
                print(f"{key}: {time.time() - t0:.0f} s", flush=True)
                for r in results[key]["rows"]:
                    print(f"  {r['method']:8s} {r['attention'] or '-':8s} {r['lower_bound'] or '-':>4} "
                          f"{r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  ab {r['ab_shift']:.3f}", flush=True)
                with open(a.output + ".tmp", "w", encoding="utf-8") as f:
                    json.dump(results, f, indent=1)
                os.replace(a.output + ".tmp", a.output)


def cmd_table(a) -> None:
    """The JSON of cmd_eval as one markdown table: a row per (model, sampler, steps, method, attention, l)."""
    with open(a.input, encoding="utf-8") as f:
        results = json.load(f)
    print("| model | sampler | steps | method | attention | l | PSNR (dB) | SSIM | ab shift | s / image |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, cell in results.items():
        model, sampler, steps = key.split("/")
        bic = next(r for r in cell["rows"] if r["method"] == "bicubic")
        for r in cell["rows"]:
            if r["method"] == "bicubic" and key != next(k for k in results if k.startswith(model + "/")):
                continue  # bicubic is the same in every cell of a model: once
            lb = "-" if r["lower_bound"] == "" else f"{r['lower_bound']:g}"
            d = "" if r["method"] == "bicubic" else f" ({r['psnr'] - bic['psnr']:+.2f})"
            print(f"| {model} | {sampler} | {steps} | {r['method']} | {r['attention'] or '-'} | {lb} | "
                  f"{r['psnr']:.2f}{d} | {r['ssim']:.4f} | {r['ab_shift']:.3f} | {r['seconds']:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--runs", required=True)
    t.add_argument("--minutes", type=float, default=25)
    e = sub.add_parser("eval")
    e.add_argument("--data", required=True)
    e.add_argument("--runs", default="")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--models", nargs="*", default=None, help="run names under --runs, or .safetensors paths")
    e.add_argument("--samplers", nargs="*", default=list(SAMPLERS), choices=list(SAMPLERS))
    e.add_argument("--steps", type=int, nargs="*", default=[20])
    e.add_argument("--attention", nargs="*", default=["edge", "gaussian", "sift"])
    e.add_argument("--lower-bounds", type=float, nargs="*", default=[0.4, 0.6, 0.8])
    e.add_argument("--size", type=int, default=256, help="HR centre crop of each held-out photograph")
    e.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("table")
    t.add_argument("input")
    a = p.parse_args()
    {"train": cmd_train, "eval": cmd_eval, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
