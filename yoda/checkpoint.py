"""Reading weight files: the generic part every loader shares (yoda.models' SR3 / SRDiff / "yoda" loaders,
the DINO extractors of yoda.attention.dino, the LPIPS heads of yoda.lpips).

    read_checkpoint(path)                    -> (object, safetensors metadata or None)
    load_state_dict_checked(module, sd, where) strict load after one error listing every problem
    check_state_dict(module, sd, where)      that check alone (works on a meta-device module)
    build_checked(build, sd, where)          build() on the meta device, checked there, then given sd's tensors
                                             (materialise): a net whose size a file sets costs nothing until the
                                             file fits it, and nothing is initialised (no random draws)
    as_state_dict(obj, where), strip_prefix(sd, prefix), betas_match(buffers, schedule)

Files are read with safetensors (recognised by content: an 8-byte header length followed by '{') or with
``torch.load(weights_only=True)`` (no pickled code runs); a file that is neither a zip archive nor a pickle (a
PNG, a text file) is said to be no checkpoint at all, with its first bytes. Every failure is a
:class:`CheckpointError` (a yoda.errors.UserError, hence a ValueError) naming the file, except a missing file
(FileNotFoundError): missing keys, unexpected keys and shape mismatches are listed (the first few of each).
A zip checkpoint with compressed records (torch.save writes none; torch.load would inflate them before any
check) and weights stored as expanded views (one value, any shape) are refused.

Model loading itself (``yoda.load``) is yoda.models.loading; the "yoda" model format is yoda.models.yoda_format.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import textwrap
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .devices import torch_defaults
from .errors import LATENT_API, UserError, broken_link


__all__ = ["CheckpointError", "read_checkpoint", "load_state_dict_checked", "check_state_dict", "build_checked",
           "as_state_dict", "strip_prefix", "betas_match", "check_path", "fmt_keys"]

_SHOW = 5  # how many keys an error message lists

PathLike = Union[str, os.PathLike]


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, wrong layout, missing / unexpected keys, wrong shapes."""


def check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = os.path.expanduser(os.fspath(path))  # ("~/m.safetensors" from Python was "not found"; the shell expands it)
    if not os.path.exists(p):
        raise FileNotFoundError(f"checkpoint file not found: {p}{broken_link(p)}")
    if not os.path.isfile(p):
        raise CheckpointError(f"checkpoint path is not a file: {p}")
    refuse_lfs_pointer(p, CheckpointError)
    return p


LFS_POINTER = b"version https://git-lfs"


def refuse_lfs_pointer(p: str, error: type) -> None:
    """``error`` naming ``p`` if the file is a git-LFS pointer (a clone made without git-lfs holds these small text
    files where the weights belong: they were "header too large" or "it starts with b'version '")."""
    if _head(p, len(LFS_POINTER)) == LFS_POINTER:
        raise error(f"{p} is a git-LFS pointer, not the weights: fetch them (`git lfs pull` in its clone) or "
                    f"download the file itself")


def is_safetensors(p: str) -> bool:
    """By content (a torch.save file named .safetensors is read as one); by name only for a file too damaged to
    tell (a safetensors file cut within its first 9 bytes: "corrupt or truncated?", not "neither format"; unless
    those begin as a pickle's do, 0x80, as 1 in 256 header lengths does: then torch's reader says it)."""
    head = _head(p, 9)  # (a safetensors header's length can begin with 0x80, as a pickle does: "{" decides)
    return head[8:9] == b"{" or (p.endswith(".safetensors") and not head.startswith(_TORCH_HEADS))


# how the files torch.load reads begin: a zip archive (torch.save since 1.6, TorchScript) or a pickle of protocol
# >= 2 (the legacy torch.save format, pickle.dump)
_TORCH_HEADS = (b"PK\x03\x04", b"\x80")


def _head(p: str, n: int = 8) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(n)


# entries only torch.export.save's archives hold: the PT2 archive's "<name>/archive_format" (torch 2.6+; AOTInductor
# packages too), the older layout's "serialized_exported_program.json" (torch.load found no data.pkl: "corrupt")
_EXPORT_NAMES = ("archive_format", "serialized_exported_program.json")


def zip_refusal(p: str) -> Optional[str]:
    """Why a zip checkpoint is refused before torch.load reads it (None: not a zip, or not refused): a TorchScript
    archive (torch.jit.save: a program, not weights; torch.load's advice on it is weights_only=False, which would
    run its code) or a torch.export one (torch.export.save's .pt2), or entries that expand to far more than the
    file: torch.save stores its records uncompressed, but torch.load also inflates compressed ones, so a 1 MB file
    could unpack to gigabytes before any key or shape is checked; or a record that fails its CRC-32 (_bad_record)."""
    import zipfile

    if _head(p, 4) != b"PK\x03\x04":
        return None
    try:
        z = zipfile.ZipFile(p)
    except NotImplementedError as e:  # a "version needed" past 6.3 in its central directory: torch.save writes 4.5
        return f"it is corrupt: {e} (a damaged copy or disk)"
    except (zipfile.BadZipFile, OSError, ValueError):
        return None  # torch.load says what is wrong with it
    with z:
        infos = z.infolist()
        if any(i.filename.endswith("/constants.pkl") or "/code/" in i.filename for i in infos):
            return ("it is a TorchScript archive (torch.jit.save), a program rather than weights, and yoda never runs "
                    "code from a file: save the model's state dict instead (torch.save(model.state_dict(), ...) or "
                    "safetensors)")
        if any(i.filename.rsplit("/", 1)[-1] in _EXPORT_NAMES for i in infos):
            return ("it is a torch.export program (torch.export.save, a .pt2 archive), not weights, and yoda never "
                    "runs code from a file: if the file is trusted, save its weights with torch.save(torch.export."
                    "load(PATH).module().state_dict(), ...) and load that")
        total, size = sum(i.file_size for i in infos), os.path.getsize(p)
        if total > 2 * size + (1 << 20):
            return (f"its zip entries expand to {total} bytes from {size} on disk (compressed records; torch.save "
                    "writes them uncompressed): refused, as a file that unpacks to far more memory than its size")
        return _bad_record(z, infos)


def _bad_record(z, infos) -> Optional[str]:
    """Why a zip checkpoint's tensors are damaged (None: every record of the open zipfile.ZipFile ``z`` matches its
    CRC-32): torch.load does not check them, so a flipped byte on disk became a weight of 4900 or a NaN in the
    optimiser's state, resumed without a word. Records stored with CRC 0 (torch.serialization.set_crc32_options(False))
    are not checked. It reads the whole file once more (a 1 GiB file ~0.7 s, about what torch.load takes), 16 MiB at
    a time."""
    import stat
    import zipfile
    import zlib

    dirs = [i.filename for i in infos if not i.filename.endswith("/")
            and (i.external_attr & 0x10 or stat.S_ISDIR(i.external_attr >> 16))]
    if dirs:  # torch's zip reader (miniz) gives no bytes for a "folder": its tensor stayed uninitialised, unsaid
        return (f"it is corrupt: record(s) {fmt_keys(dirs)} are marked as folders in the zip's central directory (a "
                "damaged copy or disk)")
    try:
        for info in infos:
            if info.CRC:
                with z.open(info) as fh:  # raises BadZipFile at the end of a record that fails its CRC
                    while fh.read(1 << 24):
                        pass
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:  # EOFError: a size past the file's end
        return f"it is corrupt: {str(e) or type(e).__name__} (a damaged copy or disk)"
    except (OSError, ValueError, RuntimeError, NotImplementedError):  # an encrypted record, deflate64, ...
        return None  # torch.load says what is wrong with it
    return None


def check_zip(p: str) -> None:
    """CheckpointError (naming p) for a zip checkpoint that zip_refusal refuses."""
    why = zip_refusal(p)
    if why:
        raise CheckpointError(f"{p}: {why}")


def weights_only_refusal(p: str, e: BaseException) -> Optional[str]:
    """The message for torch.load(weights_only=True) refusing a pickled object, naming what it found; None for
    any other error. torch's own message advises weights_only=False, which would run the file's code."""
    found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(e))))
    if not (isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e) and found):
        return None  # a corrupt file fails there too ("Unsupported operand 122"): it holds no class to allow
    return (f"{p}: it holds pickled Python objects that are not tensors ({', '.join(found)}); yoda reads "
            "only tensors and plain containers and never runs code from a file. Safe ways on: re-save the "
            "weights where the model was made, as a state dict (torch.save(model.state_dict(), ...)) or as "
            "safetensors; or, if the named classes are plain data types you trust, allow just those with "
            "torch.serialization.add_safe_globals([...]) before loading")


def load_failure(e: BaseException) -> str:
    """What went wrong in torch.load, in a line: torch's weights-only message advises weights_only=False, which is
    wrong for a corrupt file and unsafe for a foreign one, and carries terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"([Uu]nsupported (?:global: )?GLOBAL [\w.]+|Unsupported operand \d+"
                          r"|invalid load key[^.\n]*)", text)
        return "it is corrupt, or holds objects other than tensors and plain data" + (f" ({found.group(1)})"
                                                                                      if found else "")
    return f"it is corrupt or truncated ({type(e).__name__}: {first_line(text)})"


def first_line(text: str) -> str:
    """The first line of an error's text, at most 300 characters, cut between words (it ended "... o);")."""
    lines = text.strip().splitlines()
    return textwrap.shorten(lines[0], 300, placeholder=" ...") if lines else "empty"


def read_checkpoint(path: PathLike) -> Tuple[Any, Optional[Dict[str, str]]]:
    """(object, safetensors metadata or None). Safetensors -> dict of tensors; torch files -> whatever was
    saved (weights_only=True: tensors, dicts, lists, numbers; no code)."""
    p = check_path(path)
    if is_safetensors(p):
        from safetensors import SafetensorError

        try:
            tensors, meta = read_safetensors(p)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{p}: not a readable safetensors file (corrupt or truncated?): {e}") from e
        return tensors, meta
    check_zip(p)
    try:
        with open(p, "rb") as fh:  # (a file object: torch.load sends a path named .safetensors to safetensors)
            obj = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors ...
        foreign = not_torch(p)
        if foreign:
            raise CheckpointError(f"{p} is not a PyTorch or safetensors checkpoint ({foreign})") from None
        refused = weights_only_refusal(p, e)
        if refused:  # torch's own advice (load with weights_only=False) would run the file's code: say what is safe
            raise CheckpointError(refused) from None
        raise CheckpointError(f"{p}: could not read it as a torch checkpoint with weights_only=True: "
                              f"{load_failure(e)}") from None
    return obj, None


def read_safetensors(p: str) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, str]]]:
    """(tensors in key order, metadata) of the safetensors file ``p``, read into memory first: safe_open maps the
    file, and one rewritten in place while it was read (cp, rsync --inplace, save_file of another process) killed
    the process with SIGBUS, no file named."""
    import json

    from safetensors.torch import load

    with open(p, "rb") as fh:
        data = fh.read()
    tensors = load(data)  # checks the header and the data's extent
    head = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # (valid: load read it)
    return {k: tensors[k] for k in sorted(tensors)}, head.get("__metadata__")


def not_torch(p: str) -> Optional[str]:
    """How a file that torch.load failed on begins, if no torch file begins so (an image, a text file, an empty
    file): torch's errors on it (its pickle advice, "invalid load key") would mislead. None for a torch-like start."""
    head = _head(p)
    if head.startswith(_TORCH_HEADS):
        return None
    return f"it starts with {head!r}" if head else "it is empty"


# top-level key names that together mark a latent diffusion checkpoint: Stable Diffusion's .ckpt, DiffBIR's ControlNet
# (v2 / v2.1 .pt) and a whole ControlLDM's state dict
_LATENT_KEYS = ({"model", "first_stage_model"}, {"zero_convs", "middle_block_out"}, {"controlnet", "unet", "vae"})


# keys that only yoda.training.trainer's checkpoints hold beside model, ema, step and config (every version wrote
# "gen" and "rows"; the later ones below too): another trainer's {"model", "ema", "step", "config"} is no yoda run's
TRAINER_ONLY_KEYS = ("gen", "rows", "loss_version", "init_sha256", "sampling_from_init")


def refuse_train_checkpoint(obj: Any, meta: Optional[Dict[str, str]], p: Any) -> None:
    """A CheckpointError if ``obj`` is a `yoda train` checkpoint (model, EMA, step, config and a key only its trainer
    writes, TRAINER_ONLY_KEYS): not a model file; the run's model is the .safetensors next to it (read as sr3 /
    srdiff, a key-mismatch list)."""
    if (meta is None and isinstance(obj, Mapping) and {"model", "ema", "step", "config"} <= set(obj)
            and any(k in obj for k in TRAINER_ONLY_KEYS)):
        raise CheckpointError(f"{p} is a `yoda train` checkpoint (the state a run resumes from), not a model file: "
                              f"the run's model is the .safetensors file next to it (model.safetensors by default)")


def refuse_latent(obj: Any, p: Any) -> None:
    """A CheckpointError naming the Python API if ``obj`` (a state dict, or a dict with one under "state_dict")
    holds a latent diffusion model: no yoda model, SR3 or SRDiff config makes its weights fit."""
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    heads = {k.split(".", 1)[0] for k in sd if isinstance(k, str)} if isinstance(sd, Mapping) else set()
    if any(need <= heads for need in _LATENT_KEYS):
        raise CheckpointError(f"{p}: a latent diffusion model's checkpoint (Stable Diffusion / DiffBIR keys: "
                              f"{fmt_keys(sorted(heads), 4)}); {LATENT_API}")


def fmt_keys(keys, n=_SHOW) -> str:
    keys = list(keys)
    s = ", ".join(repr(k) for k in keys[:n])
    return s + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_state_dict_checked(module: nn.Module, sd: Mapping[str, Any], where: str, hint: str = "") -> nn.Module:
    """``module.load_state_dict(sd, strict=True)`` after a check that reports, in one error, the missing
    keys, unexpected keys, non-tensor values and shape mismatches (a few of each)."""
    check_state_dict(module, sd, where, hint)
    module.load_state_dict(dict(sd), strict=True)
    return module


def nonfinite_keys(sd: Mapping[str, Any]) -> list:
    """The keys of the floating tensors of ``sd`` that hold NaN or Inf."""
    return [k for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not torch.isfinite(v).all()]


def check_state_dict(module: nn.Module, sd: Mapping[str, Any], where: str, hint: str = "") -> None:
    """The check of :func:`load_state_dict_checked` alone: CheckpointError listing missing / unexpected keys,
    non-tensor values, non-floating tensors for floating weights, shape mismatches and tensors with NaN/Inf.
    ``module`` may live on the meta device (only its keys and shapes are read), so a declared architecture is
    checked before anything is allocated. ``hint``
    (which config or layout the weights need) is added only to those layout problems: weights that fit but hold
    NaN/Inf are reported as corrupt, without it."""
    own = module.state_dict()
    # BatchNorm's num_batches_tracked is absent from older files (torchvision before 0.4.0 ...): torch fills it
    missing = [k for k in own if k not in sd and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    bad_type = [k for k in sd if k in own and not isinstance(sd[k], torch.Tensor)]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sd if k in own and isinstance(sd[k], torch.Tensor) and sd[k].shape != own[k].shape]
    expanded = _expanded({k: v for k, v in sd.items() if k in own})
    not_float = [k for k in sd if k in own and isinstance(sd[k], torch.Tensor)
                 and own[k].is_floating_point() and not sd[k].is_floating_point()]  # load_state_dict would cast
    fits = {k: v for k, v in sd.items() if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
            and k not in expanded}  # only these are read (isfinite of a mis-shaped or expanded one could be huge)
    nonfinite = nonfinite_keys(fits)
    problems = []
    if expanded:
        problems.append(f"{_EXPANDED}: {fmt_keys(expanded)}")
    if missing:
        problems.append(f"missing keys: {fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {fmt_keys(unexpected)}")
    if bad_type:
        problems.append(f"values that are not tensors: {fmt_keys(bad_type)}")
    if not_float:
        problems.append(f"integer / bool / complex tensors for floating weights: {fmt_keys(not_float)}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:_SHOW])
                        + (f"; ... ({len(shapes)} in all)" if len(shapes) > _SHOW else ""))
    if problems:  # a layout or architecture problem: the hint (which config, which file) may help
        if nonfinite:
            problems.append(f"tensors with NaN/Inf: {fmt_keys(nonfinite)}")
        raise CheckpointError(f"{where}: the weights do not fit {type(module).__name__}: " + " | ".join(problems)
                              + (f". {hint}" if hint else ""))
    if nonfinite:  # the layout fits: no config can help, the values themselves are broken
        raise CheckpointError(f"{where}: the weights are corrupt: tensors with NaN/Inf: {fmt_keys(nonfinite)} "
                              f"(a damaged file or a diverged training run; use another checkpoint)")


_EXPANDED = "tensors whose storage is smaller than their shape (expanded views, not saved weights)"


def _expanded(sd: Mapping[str, Any]) -> list:
    """The keys of the strided tensors of ``sd`` with fewer bytes of storage behind them than their numel needs: a
    view of one stored value (expand, stride 0) costs nothing in a file but its full size once copied into a
    module or computed with, so a few bytes could declare gigabytes."""
    def short(t: torch.Tensor) -> bool:
        if t.layout != torch.strided or t.device.type == "meta" or t.numel() == 0:
            return False
        return t.untyped_storage().nbytes() - t.storage_offset() * t.element_size() < t.numel() * t.element_size()

    return [k for k, v in sd.items() if isinstance(v, torch.Tensor) and short(v)]


def build_checked(build: Callable[[], nn.Module], sd: Mapping[str, Any], where: str, hint: str = "",
                  blocks: int = 0) -> nn.Module:
    """``build()`` loaded strictly with ``sd``, built on the meta device and checked there (check_state_dict): an
    architecture read from a file (a config, or the tensors' shapes) that the file's tensors do not fill is
    refused before anything is allocated, so a file of a few KB cannot make yoda build a model of gigabytes. The
    weights are then given to the meta model (materialise). blocks: the blocks the config declares, each holding
    at least one tensor: more than sd has tensors is refused before the build (a config of res_blocks 1000000
    built modules for minutes, even on the meta device). Built under torch's own defaults (devices.torch_defaults),
    whatever the caller set: under torch.set_default_dtype(torch.float64) the DINO extractors were built in float64
    and failed on their float32 input, LPIPS computed in float64, and under bfloat16 both rounded their weights."""
    check_block_count(where, blocks, sd)
    with torch_defaults():
        with torch.device("meta"):
            model = build()
        check_state_dict(model, sd, where, hint)  # everything load_state_dict_checked would check
        return materialise(model, sd)


def check_block_count(where: str, blocks: int, tensors: Mapping[str, Any], what: str = "the config") -> None:
    """A CheckpointError when ``what`` declares more blocks (each holding at least one tensor) than ``tensors``
    holds: the file is not these weights, and building that model only costs time and memory."""
    if blocks > len(tensors):
        raise CheckpointError(f"{where}: {what} declares {blocks} blocks but the file holds only {len(tensors)} "
                              f"tensors: it does not describe these weights")


def materialise(model: nn.Module, sd: Mapping[str, Any]) -> nn.Module:
    """``model``, built on the meta device, holding ``sd`` (strictly: every parameter and buffer): its tensors are
    copies of sd's, on the CPU, contiguous, in the model's own dtypes (as load_state_dict's copy into an
    initialised model casts). Nothing is initialised first, so loading draws no random numbers: torch's global
    generator is left alone, in this thread and in every other (a fork_rng around an initialisation restored its
    state on exit, undoing other threads' draws meanwhile), and no time goes into initialising what is overwritten."""
    own = model.state_dict(keep_vars=True)
    weights = {k: (v.detach().to("cpu", own[k].dtype if k in own else v.dtype, copy=True,
                                 memory_format=torch.contiguous_format) if isinstance(v, torch.Tensor) else v)
               for k, v in sd.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    left = [f"{name}.{k}" if name else k for name, m in model.named_modules() for k, v in vars(m).items()
            if isinstance(v, torch.Tensor) and v.is_meta]
    left += [k for k, v in itertools.chain(model.named_parameters(), model.named_buffers()) if v.is_meta]
    if left:  # a tensor made in __init__ that is no parameter or persistent buffer: not in any file
        raise RuntimeError(f"{type(model).__name__}: {fmt_keys(sorted(set(left)))} stayed on the meta device; "
                           "make them persistent buffers or compute them in forward")
    return model


def holds_tensors(v: Any) -> bool:
    """Whether ``v`` is a dict holding tensors: a state dict (an optimizer's holds its tensors a level deeper)."""
    return isinstance(v, Mapping) and any(isinstance(t, torch.Tensor) for t in v.values())


def as_state_dict(obj: Any, where: str) -> Dict[str, Any]:
    """``obj`` as a state dict (CheckpointError naming ``where`` otherwise), its keys' "module." (DataParallel) and
    "_orig_mod." (torch.compile) prefixes stripped where every key carries them; an AveragedModel's (an EMA's)
    "n_averaged" dropped where every other key carries "module."."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    bad = [k for k in obj if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{where}: state-dict keys must be strings, got {fmt_keys(bad)}")
    inner = [k for k, v in obj.items() if holds_tensors(v)]
    if inner and not any(isinstance(v, torch.Tensor) for v in obj.values()):  # a trainer's {"model": ..., "ema": ...}
        raise CheckpointError(f"{where}: the weights are inside {fmt_keys(inner)} (a wrapper dict): save the one you "
                              f"want as the file's state dict, e.g. torch.save(ckpt[{inner[0]!r}], PATH)")
    short = _expanded(obj)
    if short:  # before any loader computes with them (a weight_norm fold, a schedule from a betas buffer)
        raise CheckpointError(f"{where}: {_EXPANDED}: {fmt_keys(short)}")
    sd = dict(obj)
    if "n_averaged" in sd and len(sd) > 1 and all(k.startswith("module.") for k in sd if k != "n_averaged"):
        del sd["n_averaged"]  # torch.optim.swa_utils.AveragedModel's (an EMA's) count beside its module.* weights
    for _ in range(2):  # either order: a compiled module wrapped in DataParallel, or the other way round
        sd = strip_prefix(strip_prefix(sd, "module."), "_orig_mod.")
    return sd


def strip_prefix(sd: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def betas_match(bufs: Dict[str, Any], schedule) -> Optional[bool]:
    b = bufs.get("betas")
    if not isinstance(b, torch.Tensor) or b.dim() != 1:
        return None
    if b.numel() != schedule.T:
        return False
    # the checkpoint keeps float32 copies of float64 betas (float16 / bfloat16 ones after net.half()): compare at
    # the buffer's resolution (fp16 keeps 1e-6 as a subnormal, to ~3e-8)
    fi = torch.finfo(b.dtype) if b.is_floating_point() else torch.finfo(torch.float32)
    rtol, atol = max(1e-5, fi.eps), max(1e-9, fi.smallest_normal * fi.eps)
    return bool(torch.allclose(b.double(), schedule.betas, rtol=rtol, atol=atol))


def refuse_yoda_file(meta: Optional[Dict[str, str]], p: Any, kind: str) -> None:
    """A file of yoda's own format (yoda.models.save_model: metadata "format" = "yoda-model") read as an upstream
    ``kind`` checkpoint would lose its card (prediction, schedule) and be sampled with upstream's defaults: refused,
    naming the right call."""
    if meta is not None and meta.get("format") == "yoda-model":
        raise CheckpointError(f"{p} is a yoda model file (it carries its own config, prediction and schedule), not "
                              f"an upstream {kind} checkpoint: load it with yoda.load('yoda', path) (the CLI's "
                              f"--model PATH, without {kind}:)")
