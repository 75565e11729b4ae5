"""The quality grid of benchmarks/QUALITY.md: {pixel SR3, residual SRDiff} x {eps, v, x0} small models trained
for the same wall time side by side, then sampled with {DDPM, DDIM eta 0, DDIM eta 1} x {plain, YODA}.

QUALITY.md §1 (six models, 25 minutes, L1 loss; 128² crops, 20 steps, DDPM / DDIM eta 0 / DDIM eta 1, YODA with
edge attention at l = 0.6):

    python benchmarks/quality_grid.py train --data DATA --runs RUNS --minutes 25 --loss l1
    python benchmarks/quality_grid.py eval  --data DATA --runs RUNS -o RUNS/grid.json \
        --samplers ddpm ddim0 ddim1 --steps 20 --size 128 --attention edge --lower-bounds 0.6
    python benchmarks/quality_grid.py table RUNS/grid.json          # the markdown table of QUALITY.md

DATA is the folder of `yoda data build`. All six runs start at once with one thread each, so they share the
machine alike (the same wall time is the same compute budget); their configs differ from
yoda/configs/default_x4.json only in the model (space), the prediction, the noise level and, with --loss, the
loss. Without --loss they take default_x4.json's loss, which is now L2 (QUALITY.md §2 chose it after the grid):
§1's grid was trained with L1, hence --loss l1 above. Without --loss, residual_x0 has the default model's config
(the residual SRDiff predicting x0, L2 loss). Each run logs to RUNS/NAME.out; it continues with
`yoda train --config RUNS/NAME.json --out RUNS/NAME --data-dir DATA` and a larger step count.

eval's defaults (every sampler, 256² crops, attentions edge / gaussian / sift, l = 0.4 / 0.6 / 0.8) make a larger
grid than §1's. Its results accumulate in the -o file: a cell (model, sampler, steps) already there is skipped
only if it was computed with the same settings (model file, data, size, attentions, lower bounds, seed);
otherwise eval stops before computing anything and asks for another -o.
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


def grid_configs(loss: str | None = None) -> dict[str, dict]:
    """The six run configs: default_x4.json with its SRDiff (0.72 M parameters) or a small SR3 UNet (0.69 M:
    compare_plain.json's model with inner_channel 16, norm_groups 8), times the three predictions; ``loss``
    ("l1" / "l2") replaces default_x4.json's loss."""
    base = _config("default_x4.json")
    if loss is not None:
        base["loss"]["loss"] = loss
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


def cmd_train(a, parser) -> None:
    if not os.path.isdir(os.path.join(a.data, "train")):
        parser.error(f"--data {a.data}: no train/ folder in it (give the folder of `yoda data build`)")
    os.makedirs(a.runs, exist_ok=True)
    procs = []
    for name, cfg in grid_configs(a.loss).items():
        d = os.path.join(a.runs, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(a.runs, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=ROOT)
        cmd = [sys.executable, "-m", "yoda", "train", "--config", path, "--out", d, "--data-dir", a.data,
               "--minutes", str(a.minutes), "-q"]
        log_path = os.path.join(a.runs, f"{name}.out")
        log = open(log_path, "w")
        procs.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
        print(f"{name}: started ({a.minutes:g} min), log {log_path}", flush=True)
    t0, n = time.time(), len(procs)
    failed = []
    while procs:
        for item in list(procs):
            name, p, log = item
            rc = p.poll()
            if rc is None:
                continue
            procs.remove(item)
            log.close()
            print(f"{name}: exit {rc} after {time.time() - t0:.0f} s"
                  + (f": FAILED, see {os.path.join(a.runs, name + '.out')}" if rc else ""), flush=True)
            if rc:
                failed.append(name)
        if procs:
            time.sleep(1.0)
    if failed:
        sys.exit(f"{len(failed)} of {n} runs failed: {', '.join(failed)}")


SAMPLERS = {"ddpm": ("ddpm", 0.0), "ddim0": ("ddim", 0.0), "ddim1": ("ddim", 1.0),
            # the sigma-space solvers (karras sigmas, eta at its default: 1 for the ancestral and SDE solvers)
            **{name: (name, None) for name in ("euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde",
                                               "dpm_2", "dpm_2_a", "dpmpp_2s_a")}}
EVAL_SEED = 0


def cell_settings(a, path: str, sampler: str, steps: int) -> dict:
    """Everything that decides a cell's numbers (stored with the cell: a rerun reuses it only if they match)."""
    return {"model": os.path.abspath(path), "data": os.path.abspath(os.path.join(a.data, "heldout")),
            "sampler": sampler, "steps": steps, "size": a.size, "attentions": list(a.attention),
            "lower_bounds": list(a.lower_bounds), "seed": EVAL_SEED}


def eval_cells(a) -> dict[str, tuple[str, dict]]:
    """{key: (model path, settings)} of every cell of this invocation; the key (MODEL/SAMPLER/STEPS) is the one
    of the JSON file and the table."""
    cells = {}
    for name in a.models or list(grid_configs()):
        path = name if name.endswith(".safetensors") else os.path.join(a.runs, name, "model.safetensors")
        for sname in a.samplers:
            for steps in a.steps:
                cells[f"{os.path.basename(name)}/{sname}/{steps}"] = (path, cell_settings(a, path, sname, steps))
    return cells


def cmd_eval(a, parser) -> None:
    """Every (model, sampler, steps) cell: bicubic, plain and the YODA variants on the held-out photographs.
    Results accumulate in the JSON file (a rerun skips the cells it already has with the same settings)."""
    if not a.runs and not all(n.endswith(".safetensors") for n in a.models or [""]):
        parser.error("give --runs (the folder of `quality_grid.py train`) or --models as .safetensors paths")
    names = [os.path.basename(n) for n in a.models or []]
    if len(set(names)) < len(names):
        parser.error(f"two --models share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}): "
                     "their cells would share a key")
    cells = eval_cells(a)
    missing = sorted({path for path, _ in cells.values() if not os.path.isfile(path)})
    if missing:
        parser.error(f"no model file {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    results = {}
    if os.path.exists(a.output):
        with open(a.output, encoding="utf-8") as f:
            results = json.load(f)
    for key, (_, settings) in cells.items():
        old = results.get(key, {}).get("settings", settings)
        if old != settings:
            diff = ", ".join(f"{k} {old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v)
            parser.error(f"{a.output} holds {key} computed with other settings ({diff}): use another -o")

    import torch

    from yoda import load
    from yoda.data import DataError, load_source
    from yoda.evaluate import EvalSettings, evaluate, summarize

    torch.set_num_threads(a.threads)
    try:
        images = load_source(os.path.join(a.data, "heldout"))
    except DataError as e:
        parser.error(f"--data {a.data}: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    model_path, model = None, None
    for key, (path, settings) in cells.items():
        if key in results:
            print(f"{key}: skipped, already in {a.output}" + (" with the same settings" if "settings" in results[key]
                  else " (written by an older version without its settings, so not checked: delete it to redo)"),
                  flush=True)
            continue
        if path != model_path:  # the cells come model by model
            model_path, model = path, load("yoda", path).eval()
        sampler, eta = SAMPLERS[settings["sampler"]]
        t0 = time.time()
        s = EvalSettings(steps=settings["steps"], sampler=sampler, eta=eta, lower_bounds=tuple(a.lower_bounds),
                         attentions=tuple(a.attention), max_size=a.size, seed=EVAL_SEED)
        try:
            with torch.inference_mode():
                rows = evaluate(model, images, s)
        except DataError as e:
            parser.error(str(e))
        results[key] = {"size": a.size, "images": len(images), "rows": summarize(rows), "settings": settings}
        print(f"{key}: {time.time() - t0:.0f} s", flush=True)
        for r in results[key]["rows"]:
            print(f"  {r['method']:8s} {r['attention'] or '-':8s} {r['lower_bound'] or '-':>4} "
                  f"{r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  ab {r['ab_shift']:.3f}", flush=True)
        with open(a.output + ".tmp", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
        os.replace(a.output + ".tmp", a.output)


def cmd_table(a, parser) -> None:
    """The JSON of cmd_eval as one markdown table: a row per (model, sampler, steps, method, attention, l)."""
    try:
        with open(a.input, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as e:  # missing, unreadable, not JSON: one line, not a traceback
        parser.error(f"{a.input}: {e.strerror or e if isinstance(e, OSError) else e}")
    print("| model | sampler | steps | method | attention | l | PSNR (dB) | SSIM | ab shift | s / image |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, cell in results.items():
        model, sampler, steps = key.split("/")
        bic = next(r for r in cell["rows"] if r["method"] == "bicubic")
        for r in cell["rows"]:
            upsampled = r["method"].startswith("bicubic")  # bicubic and bicubic-matlab (MATLAB's imresize)
            if upsampled and key != next(k for k in results if k.startswith(model + "/")):
                continue  # the same in every cell of a model: once
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
    t.add_argument("--loss", choices=["l1", "l2"], default=None,
                   help="the loss of all six runs (default: default_x4.json's, now l2; QUALITY.md §1 used l1)")
    e = sub.add_parser("eval")
    e.add_argument("--data", required=True)
    e.add_argument("--runs", default="", help="the folder of `train` (needed unless every --models is a path)")
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
    {"train": cmd_train, "eval": cmd_eval, "table": cmd_table}[a.cmd](a, sub.choices[a.cmd])


if __name__ == "__main__":
    main()
