"""What the ``yoda`` commands share: the model (--model, the default of --steps), the device, the attention
extractor, reading inputs (folders too) and writing outputs, the checks of -o and of output sizes, and
upscale_tensor (one LR image of any size through yoda.sample).
Parsing stays torch-free: torch and the library load inside these functions."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ._io import atomic_write_text
from .console import error_line, on_terminal, say
from .errors import LATENT_API, UserError, broken_link, printable
from .errors import user_input as _user_input
from .torchrun import main_rank

MODEL_KINDS = ("sr3", "srdiff")  # --model KIND:PATH: upstream checkpoints yoda.load reads
LATENT_WORDS = ("diffbir", "latent", "ldm", "diffusers", "sd")  # --model KIND:PATH the CLI cannot load: the API


def default_steps(a, model) -> bool:
    """--steps not given: adapters.model_steps, the model's own (its ModelCard's sampling: DEFAULT_STEPS for the
    embedded model, chosen for it, QUALITY.md), else OTHER_MODEL_STEPS (at most the model's T). --sampler not
    given: adapters.model_sampler, the card's, else DEFAULT_SAMPLER. --lower-bound not given: the card's (a model
    trained with YODA's masked input), else 0.6. Returns whether --steps was given."""
    from .adapters import model_lower_bound, model_sampler, model_steps

    given = a.steps is not None
    ad = adapter_of(model)
    if getattr(a, "sampler", "") is None:  # the model file's own sampler (it said "ddpm" and got DDIM)
        a.sampler = model_sampler(ad)
    if getattr(a, "lower_bound", "") is None:  # the l of the masks the model was trained with, else 0.6
        a.lower_bound = model_lower_bound(ad)
    if a.steps is None:
        a.steps = model_steps(ad)
        if "steps" not in ad.sampling_defaults:  # a model trained without a config's "sampling", an upstream one
            note(f"{a.steps} sampling steps: the model's file names none (--steps sets them)")
    return given


def load_model(spec: str, device, config: Optional[str] = None, scale: Optional[int] = None):
    """--model: "default" (the embedded x4 model), a path to a "yoda" model file, or KIND:PATH with KIND one of
    MODEL_KINDS (an upstream SR3 / SRDiff checkpoint; --model-config: its config file). scale: upscale's --scale,
    the scale of an SR3 checkpoint whose config gives none."""
    from .models.loading import DEFAULT_WEIGHTS, load

    kind, _, rest = spec.partition(":")
    if kind in MODEL_KINDS and not rest and (spec.endswith(":") or not os.path.exists(spec)):  # "file not found"
        raise UserError(f"--model {spec}: give the checkpoint's path after it: --model {kind}:PATH")
    # (os.path's expanduser: Path's raised RuntimeError, an internal error, for a ~user that does not exist)
    kind, path = (kind, Path(os.path.expanduser(rest))) if kind in MODEL_KINDS and rest else ("yoda", Path(spec))
    if spec == "default":
        path = DEFAULT_WEIGHTS
        if not path.exists():
            raise UserError(f"the embedded default model {path} is not installed; pass --model PATH")
    if kind == "yoda" and _in_diffusers_folder(path):  # it pointed at the UNet's weights, then refused them
        raise UserError(f"--model {spec}: a diffusers model ({LATENT_API}); the command line loads yoda model "
                        f"files and sr3: / srdiff: checkpoints")
    if path.is_dir():  # a training run's folder: its weights are in it
        found = sorted(path.glob("*.safetensors"))
        hint = f": its model is {found[0]}" if len(found) == 1 else " (--model takes a model file)"
        raise UserError(f"--model {spec} is a folder{hint}")
    if not path.is_file():
        word = spec.partition(":")[0]
        if rest and word not in MODEL_KINDS and len(word) > 1 and word.replace("-", "").replace("_", "").isalnum():
            latent = f" ({LATENT_API})" if word.lower() in LATENT_WORDS else ""
            case = " (kinds are lower case)" if word.lower() in MODEL_KINDS else ""
            nofile = "" if os.path.exists(os.path.expanduser(rest)) else "no such model file, and "  # diffbir:FILE
            raise UserError(f"--model {spec}: {nofile}{word!r} is not a model kind{latent}{case}; "
                            f"--model takes a yoda model file's path, 'default', or "
                            f"{' / '.join(k + ':PATH' for k in MODEL_KINDS)}")
        if path.exists():  # /dev/null, a FIFO: "not found" of a file that is there
            raise UserError(f"--model {spec}: {path} is not a regular file (a device or a pipe); give a model file")
        raise UserError(f"--model {spec}: model file not found: {path}{broken_link(path)}")
    if config is not None:
        if kind == "yoda":
            raise UserError(f"--model-config is for sr3:PATH or srdiff:PATH models; a yoda model file carries its "
                            f"own config (--model {spec})")
        if not Path(config).is_file():
            raise UserError(f"--model-config: file not found: {config}")
    try:
        with _user_input():
            model = load(kind, str(path), config=config, scale=scale if kind == "sr3" else None)
    except UserError as e:  # the file's own complaint, said of the options that named it
        raise UserError(f"--model{' / --model-config' if config is not None else ''} ({kind}): {e}") from e
    return model.to(device).eval()


def cli_model(a, device, scale: Optional[int] = None, cfg_scale: Optional[float] = None):
    """(model, its adapter, whether --steps was given): --model on ``device`` (load_model; --cfg-scale: guided_model),
    a's sampling options that were left out set to the model's (default_steps)."""
    model = guided_model(load_model(a.model, device, a.model_config, scale), cfg_scale)
    given = default_steps(a, model)
    return model, adapter_of(model), given


def guided_model(model, cfg_scale):
    """--cfg-scale: ``model`` itself for None, else its adapter guided with that scale (yoda.adapters'
    apply_cfg_scale); a UserError naming --cfg-scale for a model without an unconditional branch or a bad scale."""
    if cfg_scale is None:
        return model
    from .adapters import apply_cfg_scale, as_adapter

    adapter = as_adapter(model)
    if not getattr(adapter, "supports_cfg", False):
        raise UserError(f"--cfg-scale {cfg_scale:g}: this model (a {type(model).__name__}; the embedded model, yoda's "
                        f"own and SR3 / SRDiff checkpoints all are SR3 or SRDiff) has no unconditional branch, so it "
                        f"cannot use classifier-free guidance; leave --cfg-scale out")
    try:
        return apply_cfg_scale(adapter, cfg_scale)
    except (TypeError, ValueError) as e:
        raise UserError(f"--cfg-scale {cfg_scale:g}: {e}") from e


def _in_diffusers_folder(path: Path) -> bool:
    """Whether path is a diffusers model folder or a file in one: a model_index.json there or one folder up (a
    pipeline's), or a config.json / scheduler_config.json naming a diffusers class (``_class_name``)."""
    import json

    from ._json_fields import read_config_text

    if not path.exists():  # a name not found is said so
        return False
    folder = (path if path.is_dir() else path.parent).absolute()
    if any((d / "model_index.json").is_file() for d in (folder, folder.parent)):
        return True
    for name in ("config.json", "scheduler_config.json"):
        try:
            config = json.loads(read_config_text(str(folder / name), "config file"))
        except (OSError, ValueError, RecursionError):  # absent, unreadable, a pipe, huge, not JSON, too deep
            continue
        if isinstance(config, dict) and "_class_name" in config:
            return True
    return False


def cli_device(name: str):
    """--device: auto | cpu | cuda (yoda.devices.resolve_device); a device that is not there is a user error."""
    from .devices import resolve_device

    with _user_input():
        return resolve_device(name)


def attention_extractor(name: Optional[str], plain_ok: bool = False):
    """--attention NAME -> the extractor (yoda.attention.get); an unknown name or a bad weights file is a user
    error (plain_ok: the command takes none too, and the known names say so)."""
    from .attention import get

    if name is None:  # --attention none
        raise UserError("--attention none (or plain, no map): this command draws or compares an attention map; "
                        "name one (edge, gaussian, sift, dino-vits8:PATH, dino-resnet50:PATH)")
    try:
        with _user_input():
            return get(name)
    except (UserError, FileNotFoundError) as e:  # (a missing weights file was said without the option)
        plain = ", none (plain sampling)" if plain_ok and "; known: " in str(e) else ""
        raise UserError(f"--attention {name}: {e}{plain}") from None


def adapter_of(model):
    from .adapters import as_adapter

    return as_adapter(model)


def upscale_tensor(model, lr, *, attention, steps, sampler, eta, lower_bound, seed, progress, windows=None,
                   window_batch=None, sigmas=None, speed=None, callback=None):
    """SR of lr (1, 3, h, w) of any size (yoda.sample(pad=True): edge-padded to a size the model takes, the SR
    cropped back to (1, 3, s*h, s*w), the attention map made of lr itself). windows / window_batch: yoda.sample's
    tiled denoising; speed: a dict of its speed options (compile, autocast, channels_last, cuda_graphs); callback:
    yoda.sample's; attention: an extractor (attention_extractor(name)) or None."""
    from .sampling import sample

    with _user_input():  # the options, the model and its outputs (NaN/Inf) are the user's
        return sample(adapter_of(model), lr, attention=attention, steps=steps, sampler=sampler, eta=eta,
                      lower_bound=lower_bound, seed=seed, progress=progress, windows=windows,
                      window_batch=window_batch, sigmas=sigmas, callback=callback, pad=True, **(speed or {}))


def read_input(path: str, max_pixels: Optional[int] = None, carry: int = 0) -> tuple[np.ndarray, bool, dict]:
    """(uint8 RGB (H, W, 3), whether the file is grey, the metadata an output ``carry`` times larger carries:
    save_image's exif and xmp (yoda.exif.read_exif, yoda.xmp.read_xmp; {} for carry 0)). max_pixels: None =
    yoda.images.MAX_PIXELS."""
    import warnings

    from .exif import read_exif
    from .images import is_grey, read_image
    from .xmp import read_xmp

    said: list = []
    try:  # the CLI's one thread (catch_warnings is process-wide: no place for it in the library)
        with _user_input(), warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            a = read_image(path, max_pixels)
            # (Pillow's "Corrupt EXIF data" again: said once, below)
            meta = {"exif": read_exif(path, carry), "xmp": read_xmp(path, carry)} if carry else {}
    finally:  # said again of the file, read or not: Pillow's own ("Corrupt EXIF data ...") named none
        for text, category in dict.fromkeys((str(w.message), w.category) for w in said):  # each once
            named = path in text or str(Path(path)) in text  # yoda's own name it ("./a.gif" as "a.gif")
            warnings.warn(text if named else f"{path}: {text}", category, stacklevel=2)
    return a, is_grey(a), meta


def bars(a) -> bool:
    """Progress bars: not with -q, nor into a log file or a pipe (every redraw, no newline), as tqdm's disable=None."""
    return not a.quiet and on_terminal()


def save_output(x, path: str, grey: bool = False, meta: Optional[dict] = None) -> None:
    """upscale's output, with its input's metadata (read_input's) if any: its folder is made again if it
    went meanwhile (a second upscale into it, started twice by mistake and stopped, removes the folder it made while
    that folder is still empty)."""
    from .images import as_written, save_image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_image(as_written(x, grey).cpu(), path, **(meta or {}))


def save_figure(img, path: str) -> None:
    from .images import save_pil

    check_output_option(path)
    save_pil(img, path)


def written_or_said(write: Callable[[], Any], numbers: Callable[[], None]) -> Any:
    """write()'s result, where it fails with an OSError (a full disk) after ``numbers()`` said what the command
    measured, which it says nowhere else. The caller says them after a write that worked: a stdout that cannot be
    written (`> /dev/full`) must not take the file."""
    try:
        return write()
    except OSError:
        numbers()
        raise


def note(text: str) -> None:
    """``yoda: note: TEXT`` on stderr, once: under torchrun rank 0 says it (every rank reads the same inputs)."""
    if main_rank():
        error_line(f"yoda: note: {text}")


def eval_images(given: Optional[list], max_pixels: Optional[int], model: Optional[str] = None):
    """--images PATH... (image files, and folders standing for their images; read one at a time as the work reaches
    them, and evaluate / compute skip an unreadable one through their on_error), else the held-out set. model:
    --model; where it is the embedded model, images named as its training photographs are noted."""
    from .data import ImageStream, load_source

    if not given:
        return load_source("heldout")
    twice: list = []
    real, found = frozenset(os.path.realpath(p) for p in given), []
    for p in given:
        if os.path.isdir(p):
            try:
                found += folder_images(p, real)
            except UserError as e:
                raise UserError(f"--images: {e}") from None
        elif not os.path.isfile(p):
            raise UserError(f"--images: {p} not found{broken_link(Path(p))}" if not os.path.exists(p) else
                            f"--images: {p} is not a regular file")
        else:
            found.append(p)
    paths = once_each(found, {}, twice)  # a link's image counted twice in every mean
    if twice:
        note(f"scored once, under the name met first: {printable(', '.join(twice))}")
    if model is not None:
        trained_on_note(model, paths)
    return ImageStream(paths, max_pixels)


def trained_on_note(model: str, paths) -> None:
    """A note on the images of ``paths`` named as a training photograph of the embedded model (`yoda data build`'s
    train/ names them so): their scores are not held-out scores. By name only (a renamed copy is not seen)."""
    from .models.loading import DEFAULT_WEIGHTS, is_default_weights
    from .photos import HELD_OUT_PHOTOS, PHOTOS

    if model != "default" and not is_default_weights(model):
        folder = training_folder(model)
        seen = sorted(Path(p).name for p in paths if folder and os.path.realpath(p).startswith(folder + os.sep))
        if seen:
            note(f"{len(seen)} of the images {'is' if len(seen) == 1 else 'are'} in {printable(folder)}, the folder "
                 f"the model was trained on ({printable(', '.join(seen[:3]))}{', ...' if len(seen) > 3 else ''}): "
                 f"their scores are not held-out scores")
        return
    trained = set(PHOTOS) - set(HELD_OUT_PHOTOS)
    seen = sorted(Path(p).name for p in paths if Path(p).stem in trained)
    if seen:
        note(f"{len(seen)} of the images {'is' if len(seen) == 1 else 'are'} named as photographs the embedded model "
             f"({DEFAULT_WEIGHTS.name}) was trained on ({printable(', '.join(seen[:3]))}"
             f"{', ...' if len(seen) > 3 else ''}): their scores are not held-out scores (`yoda data build` puts the "
             f"held-out photographs in heldout/)")


def training_folder(model: str) -> Optional[str]:
    """The real path of the image folder a model file of `yoda train` was trained on (its metadata's
    extra.train_config.data.source), or None (another file, a named source such as "builtin", unreadable)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(model, "pt") as f:
            source = json.loads((f.metadata() or {})["config"])["extra"]["train_config"]["data"]["source"]
        return os.path.realpath(source) if os.path.isabs(source) and os.path.isdir(source) else None
    except Exception:  # noqa: BLE001 - a note only: any file it cannot read this way has none
        return None


def eval_results(a, rows: list, partial: str = "") -> None:
    """eval's table on stdout and in -o (a .csv: the rows themselves), if there are rows; ``partial``: why they are
    not all. The table says how the images were cropped."""
    from .evaluate import markdown_table, summarize, write_csv

    if not rows:
        if a.output:  # a script reading it after exit code 2 got an earlier run's rows without a word
            left = " (the file there is an earlier run's)" if os.path.exists(a.output) else ""
            error_line(f"yoda: -o {printable(a.output)} is not written: no image was scored{left}")
        return
    out, stale = a.output, None
    if out:  # a stopped run's rows or table go to NAME.partial.EXT: not taken for a whole run's (nor written over
        # an earlier run's); a whole run removes a stopped one's once its own file is written (a full disk kept none)
        part = "{}.partial{}".format(*os.path.splitext(out))
        if partial:
            out, partial = part, f"{partial}; written to {part}"
        else:
            stale = part
    crop = f"each image centre-cropped to at most {a.max_size} pixels a side (--max-size; 0: whole images)"
    notes = [n for n in (crop if a.max_size > 0 else "", f"partial: {partial}" if partial else "") if n]
    sampled = next(r for r in rows if r["method"] == "plain")  # the same sampler and steps in every sampled row
    k = sampled["steps"]
    head = (f"yoda eval: model {a.model}, {sampled['sampler']} {k} step{'s' * (k != 1)}"
            + (f", eta {a.eta:g}" if a.eta is not None else "") + f", seed {a.seed}, "
            + ("PSNR-Y / SSIM-Y (luma, a border of the scale cut)" if a.y_channel else "PSNR / SSIM on RGB") + "\n\n")
    table = head + markdown_table(summarize(rows), y_channel=a.y_channel) + "".join(f"\n\n({n})" for n in notes)
    # first: a file that cannot be written (a full disk) must not take the measured table with it; with -o, a stdout
    # that cannot be written (`| head -1`, `>/dev/full`) must not take the file; without, the table is the output
    # (a full disk is an error; a reader that went away, `| head -1`, is not)
    say(table, full_ok=bool(out))
    if out and out.lower().endswith(".csv"):
        write_csv(out, rows)
    elif out:
        atomic_write_text(out, table + "\n")
    if stale and os.path.isfile(stale):
        os.remove(stale)


def last_tau(adapter, a, device, lower_bound: Optional[float] = None) -> Callable[[int], float]:
    """yoda.sampling.spec.last_tau_at with the sampling options of ``a`` (lower_bound: another than a's)."""
    from .sampling.spec import last_tau_at

    return last_tau_at(adapter, sampler=a.sampler, eta=getattr(a, "eta", None), seed=a.seed, device=device,
                       lower_bound=a.lower_bound if lower_bound is None else lower_bound,
                       sigmas=getattr(a, "sigmas", None))


def eval_steps_note(adapter, a, device, settings, given: bool) -> None:
    """eval's note on its YODA rows' steps: without --steps, where they take more than plain's
    (evaluate.yoda_row_steps, as upscale takes them); where a row's steps leave pixels at the bicubic image (with
    --steps; they read as a loss of the method: -0.52 dB at 1 step and l = 0.6, where 2 steps give -0.02)."""
    from .evaluate import yoda_row_steps

    check_attentions(a.attention)  # first: a bad name makes the note moot
    lbs = a.lower_bounds
    if not given:
        by_lb = yoda_row_steps(adapter, settings)
        raised = [(lb, n) for lb, n in by_lb.items() if n != a.steps]
        if raised:
            note("the YODA rows take " + ", ".join(f"{n} steps at l = {lb:g}" for lb, n in raised) + ", the fewest "
                 f"whose last step refines every pixel, as upscale --attention (plain {a.steps}); --steps sets one "
                 "count for every row")
        lbs = [lb for lb, n in by_lb.items() if n == a.steps]  # covered already, or by no count: said below
    unrefined_note(adapter, a, device, lbs, "the YODA rows", "the plain rows refine")


def unrefined_note(adapter, a, device, lower_bounds, what: str, plain: str) -> None:
    """A note where a.steps leave pixels of ``what`` (YODA at each of ``lower_bounds``) at the bicubic image, with
    the count that refines every pixel (yoda.sample warns of it; the commands say it in their words)."""
    from .sampling.spec import unrefined

    left = [(lb, *u) for lb in lower_bounds
            if (u := unrefined(last_tau(adapter, a, device, lb), a.steps, adapter.schedule.T))]
    if left:
        below = ", ".join(f"{tau:.2f} at l = {lb:g}" for lb, tau, _ in left)
        fix = "" if None in [n for *_, n in left] else f"; --steps {max(n for *_, n in left)} refines every pixel"
        note(f"at {a.steps} step(s) {what} keep the bicubic image where the attention is below {below} "
             f"({plain} every pixel){fix}")


def check_attentions(names) -> None:
    """--attention NAME ...: each checked, a weights file read once (attention_extractor), so that a bad name or
    file is said of --attention before any work or note (eval and figures make the extractors as they use them)."""
    from .attention import check_name

    for name in names:
        try:
            with _user_input():
                needs_file = check_name(name)[1] is not None
        except UserError as e:
            raise UserError(f"--attention {name}: {e}") from None
        if needs_file:
            attention_extractor(name)


def folder_images(folder: str, given: frozenset = frozenset()) -> list:
    """yoda.data.list_folder of ``folder``, with a note on stderr naming what it left out, less the entries
    among ``given`` (real paths of the command's other inputs: a subfolder or a file named too is not left out)."""
    from .data import left_out_note, list_folder

    left_out: list = []
    with _user_input():
        paths = list_folder(folder, left_out)
    left_out = [n for n in left_out if os.path.realpath(os.path.join(folder, n)) not in given]
    if left_out:
        note(printable(left_out_note(folder, left_out)))
    return paths


def tree_images(root: str, skip: frozenset = frozenset()) -> dict:
    """{image path: its folder relative to ``root`` ("" for root's own)} of ``root`` and its subfolders, each as
    yoda.data.list_folder takes a folder's images, folders sorted by name (not hidden ones, nor those among
    ``skip``: real paths, the output folder; links to folders are not followed), with one note naming the other
    files it leaves out; a UserError where none holds an image."""
    from .data import IMAGE_EXTENSIONS, DataError, list_folder, name_list, name_order

    found, left = {}, []
    for folder, subs, _ in os.walk(root):
        subs[:] = sorted((d for d in subs if not d.startswith(".") and os.path.realpath(os.path.join(folder, d))
                          not in skip), key=name_order)
        rel = os.path.relpath(folder, root)
        here: list = []
        with contextlib.suppress(DataError):  # (a folder of subfolders only)
            found.update((f, "" if rel == "." else rel) for f in list_folder(folder, here))
        left += [n if rel == "." else os.path.join(rel, n) for n in here if not n.endswith("/")]
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {root} or its subfolders")
    if left:
        note(printable(f"{root}: left out {name_list(left)} (files without the suffixes {', '.join(IMAGE_EXTENSIONS)}, and "
                       f"hidden ones)"))
    return found


def check_output_option(path: str, kept: bool = False) -> None:
    """-o of an image: suffix, folder, writable, checked before any work (yoda.images.check_output; ``kept``: an
    existing file is skipped, --skip-existing, so it may be read-only)."""
    from .images import check_output

    with _user_input():
        check_output(path, "-o", kept)


def check_out_folder(output: str, files) -> None:
    """-o as a folder: an existing one must take ``files``; a new one must be creatable (its nearest existing
    ancestor a writable folder)."""
    from ._io import check_folder_writable, check_writable

    if Path(output).is_dir():
        for f in files:
            check_writable(f, "-o")
    else:
        check_folder_writable(output, "-o")


def check_hr_size(src: str, arr, scale: int, max_pixels: Optional[int], dst: Optional[str] = None,
                  grey: bool = False) -> None:
    """Refuse an input whose x``scale`` output would exceed the pixel limit, or not fit in the format of the
    output file ``dst`` (WebP, JPEG: images.MAX_SIDE), before sampling it."""
    from . import images

    limit = images.pixel_limit(max_pixels)
    h, w = arr.shape[:2]
    if limit and scale * scale * h * w > limit:
        raise UserError(f"{src}: {w}x{h} upscaled x{scale} is {scale * w}x{scale * h} = {scale * scale * h * w} "
                        f"pixels, more than the limit of {limit} (--max-pixels N raises it)")
    if dst is not None:
        try:
            images.check_fits(dst, scale * w, scale * h, what=f"{src}: output", grey=grey)
        except ValueError as e:
            raise UserError(str(e)) from None


def file_ids(paths) -> dict:
    """{(st_dev, st_ino): path} of the files among ``paths`` that exist: one stat each."""
    ids = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        ids.setdefault((st.st_dev, st.st_ino), p)
    return ids


def once_each(paths, seen: dict, twice: list) -> list:
    """``paths`` less the files already in ``seen`` ({file id or real path: the name it was first met by}; a link to
    a file, a hard link, the file by two names), each added there; a repeat under another name is described in
    ``twice`` ("NAME (as FIRST)")."""
    out = []
    for f in paths:
        try:
            st = os.stat(f)
            key: object = (st.st_dev, st.st_ino)
        except OSError:  # a broken link: its reader says so
            key = os.path.realpath(f)
        if key not in seen:
            seen[key] = f
            out.append(f)
        elif os.path.abspath(f) != os.path.abspath(seen[key]):
            twice.append(f"{f} (as {seen[key]})")
    return out


def check_not_an_input(ids: dict, dst: str, made_from: Optional[str] = None) -> None:
    """yoda never writes over one of its inputs (-o naming the input, or an output name an input already has);
    ``ids``: file_ids of the inputs (a set lookup per output, so a resumed folder of 10,000 images checks fast);
    ``made_from``: the input whose output name ``dst`` is (a folder's), named in the message."""
    try:
        st = os.stat(dst)
    except OSError:
        return
    src = ids.get((st.st_dev, st.st_ino))
    if src is None:
        return
    if made_from is None:
        raise UserError(f"-o {dst} is the input {src}: yoda does not overwrite its inputs; choose another name")
    raise UserError(f"the output of {made_from} would be {dst}, which is the input {src} (it has an output's name "
                    f"but not an output's size): yoda does not overwrite its inputs; rename it, write elsewhere with "
                    f"-o DIR, or pass --skip-existing to leave {made_from} out")


def refuse_overwriting(outputs, inputs) -> None:
    """No path of ``outputs`` is one of the command's input files (``inputs``: paths; a folder among them stands
    for the images in it, as the commands read it; None and names that are no file are passed over)."""
    files = []
    for p in inputs:
        if p and os.path.isdir(p):
            from .data import DataError, list_folder

            with contextlib.suppress(DataError):  # no images: the command says so where it reads the folder
                files += list_folder(p)
        elif p:
            files.append(p)
    ids = file_ids(files)
    for dst in outputs:
        check_not_an_input(ids, os.fspath(dst))


@contextlib.contextmanager
def pillow_limit(max_pixels: Optional[int]):
    """For one command (cli.main): Pillow's own decompression-bomb limit raised to --max-pixels (restored after),
    and its DecompressionBombWarning silenced (yoda.images.MAX_PIXELS decides, in one line)."""
    import warnings

    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    if max_pixels == 0:
        Image.MAX_IMAGE_PIXELS = None
    elif max_pixels is not None and old is not None and max_pixels > old:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old
