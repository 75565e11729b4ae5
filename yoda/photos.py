"""Real colour photographs for training and evaluation, from Debian wallpaper packages: ``yoda data build``.

scikit-image's bundled images are mostly grey scientific pictures; a model trained on them barely learns
colour. Debian ships colour photographs inside its wallpaper packages. ``build(out)`` gathers the ones that
are installed (only what is on disk; nothing is downloaded), downscales each whole photograph so that its
short side is ``short_side`` pixels (Pillow's antialiased Lanczos: wallpapers are soft and JPEG-compressed
at full size, a downscaled copy is a sharp HR image), and writes

    out/train/<name>.png      the training photographs
    out/heldout/<name>.png    the held-out photographs (HELD_OUT_PHOTOS): evaluation only, never cropped for
                              training; yoda.data refuses them as a training source
    out/manifest.json         for every photograph: source package and version, source file and its sha256,
                              source size, the stored file and its sha256, the split

Install the packages first, e.g. ``apt-get install plasma-workspace-wallpapers lomiri-wallpapers-16.04
lomiri-wallpapers-20.04 mate-backgrounds``. PHOTOS lists the files of those packages that are photographs
(the rest of the packages are vector art, gradients and logos); it was read off a contact sheet once.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from PIL import Image

from ._io import (atomic_write_text, check_folder_writable, file_sha256, folder_lock, made_dirs, remove_empty,
                  remove_stale_temps, renamed)
from .images import DataError, read_image, save_pil
from .names import WALLPAPER_PACKAGES

__all__ = ["HELD_OUT_PHOTOS", "PACKAGES", "PHOTOS", "Built", "Photo", "build", "downscaled",
           "installed_photos"]

PACKAGES = WALLPAPER_PACKAGES
_PLASMA = "/usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
_BG = "/usr/share/backgrounds/"

# name -> (Debian package, file). Photographs only.
PHOTOS: dict[str, tuple[str, str]] = {
    **{f"plasma-{n}": ("plasma-workspace-wallpapers", _PLASMA.format(n)) for n in (
        "Autumn", "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
        "Kite", "OneStandsOut", "Path", "summer_1am")},
    "plasma-Volna": ("plasma-workspace-wallpapers", "/usr/share/wallpapers/Volna/contents/images/5120x2880.jpg"),
    **{f"lomiri-{n.split('_by_')[0]}": ("lomiri-wallpapers-16.04", _BG + n + ".jpg") for n in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich",
        "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi")},
    "lomiri-Kleiber": ("lomiri-wallpapers-20.04", _BG + "Kleiber_by_Lukas_Baubkus.jpg"),
    **{f"mate-{n}": ("mate-backgrounds", f"{_BG}mate/nature/{n}.jpg") for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")},
}

# Whole photographs kept out of training: every 4th name in sorted order (fixed before any model was trained).
HELD_OUT_PHOTOS: tuple[str, ...] = tuple(sorted(PHOTOS)[1::4])


@dataclass(frozen=True)
class Photo:
    name: str
    package: str
    version: str
    source: str
    source_sha256: str
    source_size: tuple[int, int]
    file: str  # relative to the output folder
    sha256: str
    size: tuple[int, int]
    split: str  # "train" | "heldout"


def _package_version(package: str) -> Optional[str]:
    """The installed version of a Debian package, or None if it is not installed (or dpkg is missing)."""
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package], capture_output=True,
                           text=True, check=False)
    except OSError:
        return None
    status, _, version = r.stdout.partition("\t")
    return version if r.returncode == 0 and status.endswith(" installed") else None


def installed_photos() -> dict[str, tuple[str, str, str]]:
    """{name: (package, version, file)} for the PHOTOS whose package is installed and file is on disk."""
    versions: dict[str, Optional[str]] = {}
    out = {}
    for name, (pkg, path) in sorted(PHOTOS.items()):
        if pkg not in versions:
            versions[pkg] = _package_version(pkg)
        if versions[pkg] is not None and os.path.isfile(path):
            out[name] = (pkg, versions[pkg], path)
    return out


class Built(NamedTuple):
    """What build() did: the manifest rows, the photographs it could not read ({name: error}), and the names of
    PHOTOS it did not get because their package or file is not installed."""

    rows: list
    skipped: dict
    not_installed: list


def _check_out(out: str) -> None:
    """--out before any work: a folder (or a name one can be made at), whose train/ and heldout/ are absent or
    hold only what a build writes (<name>.png of PHOTOS): they are replaced as a whole."""
    if not out.strip():
        raise DataError("--out must name a folder, got an empty string")
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.basename(os.path.normpath(out)) in ("train", "heldout") and os.path.isfile(
            os.path.join(parent, "manifest.json")):  # (`build b1/train` for `build b1`: a build inside a build)
        raise DataError(f"--out {out} is a split of the build in {parent}: give {parent} to build it again")
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest) and not os.path.isfile(manifest):
        raise DataError(f"--out {out}: {manifest} is not a file")
    for split in ("train", "heldout"):
        d = os.path.join(out, split)
        if os.path.exists(d) and not os.path.isdir(d):
            raise DataError(f"--out {out}: {d} is a file, not a folder")
        others = sorted(set(os.listdir(d)) - {f"{n}.png" for n in PHOTOS}) if os.path.isdir(d) else []
        if others:
            raise DataError(f"--out {out}: {d} holds files that `yoda data build` does not write ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}), and a build replaces the whole folder: choose "
                            f"another --out or move them")
        if os.path.isdir(d):  # a build moves it aside: a read-only one was found after all the work
            check_folder_writable(d, "--out")
    check_folder_writable(out, "--out")


_BUILT = ("manifest.json", "train", "heldout")  # what a build owns in its folder
_STAGE = ".build-"  # the prefix of its staging folder there


def _recover(out: str) -> None:
    """Remove the staging folders an earlier build left in ``out`` (killed, or interrupted in its cleanup). One
    killed in its swap, before the new manifest was written, had moved the build before it aside: that build is
    put back (the new splits it had moved in go)."""
    import glob
    import shutil

    for stage in glob.glob(os.path.join(glob.escape(out), _STAGE + "*")):
        if os.path.exists(os.path.join(stage, "old-manifest.json")) and not os.path.exists(
                os.path.join(out, "manifest.json")):
            for n in reversed(_BUILT):
                old, cur = os.path.join(stage, f"old-{n}"), os.path.join(out, n)
                if os.path.exists(old):
                    if os.path.isdir(cur):
                        shutil.rmtree(cur)
                    os.rename(old, cur)
        shutil.rmtree(stage, ignore_errors=True)


def build(out: str, *, short_side: int = 512, photos: Optional[dict] = None,
          progress: Optional[Callable[[str], None]] = None) -> Built:
    """Gather the installed photographs into ``out`` (see the module docstring).

    photos: {name: (package, version, file)}, default installed_photos(); the other names of PHOTOS are reported
    as not installed. A source that cannot be read is skipped (reported, and named in the manifest). Everything
    is written into a staging folder inside ``out`` first; then the manifest of an earlier build is removed,
    out/train and out/heldout are replaced as a whole (no file of an earlier build stays behind), and the new
    manifest is written last. So an interrupted build leaves the earlier build whole, or no manifest. A second
    build into the same ``out`` while one runs is refused (yoda._io.folder_lock)."""
    if short_side < 64:
        raise ValueError(f"short_side must be >= 64, got {short_side}")
    _check_out(out)
    photos = installed_photos() if photos is None else photos
    if not photos:
        raise DataError(f"none of the photograph packages is installed; install them: apt-get install "
                        f"{' '.join(PACKAGES)}")
    made = made_dirs(Path(out))
    with folder_lock(out, "--out"):  # a second build at once would delete this one's staging folder
        remove_stale_temps([os.path.join(out, "manifest.json")], 0)  # of a build killed while writing it
        try:
            return _build_into(out, short_side, photos, progress)
        finally:
            remove_empty(made)  # a folder made for a build that wrote nothing (while still held)


def downscaled(img: Image.Image, short_side: int) -> Image.Image:
    """``img`` as build() stores a photograph: its short side brought down to ``short_side`` pixels (Pillow's
    antialiased Lanczos), never enlarged."""
    w, h = img.size
    f = short_side / min(w, h)
    return img.resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS, reducing_gap=3.0) if f < 1 else img


def _build_into(out: str, short_side: int, photos: dict, progress: Optional[Callable[[str], None]]) -> Built:
    """build()'s work in the existing folder ``out``, which this process holds."""
    import shutil
    import tempfile

    _recover(out)
    stage = tempfile.mkdtemp(prefix=_STAGE, dir=out)
    try:
        rows, skipped = [], {}
        for name, (pkg, version, path) in sorted(photos.items()):
            split = "heldout" if name in HELD_OUT_PHOTOS else "train"
            try:
                arr = read_image(path)
            except (DataError, OSError) as e:
                skipped[name] = str(e)  # reported by the caller (the CLI: one line each)
                continue
            img = Image.fromarray(arr)
            w, h = img.size
            img = downscaled(img, short_side)
            rel = f"{split}/{name}.png"
            try:
                os.makedirs(os.path.join(stage, split), exist_ok=True)
                save_pil(img, os.path.join(stage, rel))
            except OSError as e:  # named as the user knows it: the staging file is gone when the error is read
                raise renamed(e, f"{rel} in --out {out}") from None
            rows.append(Photo(name, pkg, version, str(path), file_sha256(path), (w, h), rel,
                              file_sha256(os.path.join(stage, rel)), img.size, split))
            if progress is not None:
                progress(f"{split:8s} {name} {w}x{h} -> {img.size[0]}x{img.size[1]}")
        if not rows:
            why = "; ".join(f"{n}: {e}" for n, e in list(skipped.items())[:3])
            raise DataError(f"none of the {len(photos)} installed photographs could be read ({why}"
                            f"{'; ...' if len(skipped) > 3 else ''})")
        not_installed = sorted(set(PHOTOS) - set(photos))
        manifest = {
            "what": "yoda data build: colour photographs from installed Debian wallpaper packages",
            "short_side": short_side,
            "held_out": list(HELD_OUT_PHOTOS),
            "photos": [asdict(r) for r in rows],
            "skipped": skipped,
            "not_installed": not_installed,
        }
        # the swap: the earlier build aside (manifest first), the new splits in, the new manifest last; undone if
        # it does not complete (a kill that allows no undo is mended by the next build, _recover)
        renames = [(os.path.join(out, n), os.path.join(stage, f"old-{n}")) for n in _BUILT]
        renames += [(os.path.join(stage, n), os.path.join(out, n)) for n in _BUILT[1:]]
        moved = []
        try:
            for src, dst in renames:
                if os.path.exists(src):
                    os.rename(src, dst)
                    moved.append((src, dst))
            atomic_write_text(os.path.join(out, "manifest.json"), json.dumps(manifest, indent=1) + "\n")
        except BaseException:
            for src, dst in reversed(moved):
                if os.path.exists(dst) and not os.path.exists(src):
                    os.rename(dst, src)
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Built(rows, skipped, not_installed)
