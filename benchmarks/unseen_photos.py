"""Test sets of photographs no yoda model has seen: colour photographs from Debian packages that `yoda data build`
does not use, prepared as it prepares its own (decoded by yoda.images.read_image, Pillow Lanczos to a short side of
512 px, PNG). Set "7" (benchmarks/QUALITY.md §7): 25 photographs of two packages; set "10" (§10): 20 of two others.

    python benchmarks/unseen_photos.py OUT [--set 10]   # apt-get download the packages into OUT/debs, then OUT/*.png
    yoda eval --images OUT --max-size 256 --steps 1 --attention edge --lower-bounds 0.8

- lxqt-themes (LXQt's wallpapers, CC-BY-SA-3.0 / LGPL-2.1+): the 11 photographs of usr/share/lxqt/wallpapers;
  the folder's other files are renders and logos.
- enlightenment-data (BSD-2-clause): the 14 photographs among its backgrounds. Each is an Edje file (.edj), an
  Eet archive: a big-endian header (magic 0x1EE70F42, entry count, dictionary size) and one 24-byte record per
  entry (offset, size, unpacked size, name offset, name size, flags). The picture is stored at several sizes as
  JPEG entries "edje/images/N"; the largest, as stored, is the photograph. Their other backgrounds are drawings,
  gradients and patterns.

OUT/manifest.json records each file's package, version, source, the source's sha256 and the PNG's. Chosen by eye
(2026-12-03) from contact sheets of every image with a short side of at least 1024 px in the Debian 12 packages
that ship wallpapers; the others had none (gnome-backgrounds, ukui-wallpapers: renders; desktop-base,
debian-edu-artwork-*: theme artwork). Never used to train, tune or choose anything: a report-only test set.

Set "10" (chosen by eye by a review, 2026-12-06, from a contact sheet; photographs with a short side of at least
512 px; nothing chosen on them either):
- palapeli-data (KDE's jigsaw puzzles; GFDL / public domain by their .desktop files): 5 photographs of
  usr/share/palapeli/collection.
- tuxpaint-data (Tux Paint's templates): 15 photographs of usr/share/tuxpaint/templates; several are under 0.8x
  above 512 px, so some JPEG blocking is left in them (jellyfish's dark background).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from yoda._io import atomic_write_text, file_sha256  # noqa: E402
from yoda.images import read_image, save_pil  # noqa: E402
from yoda.photos import downscaled  # noqa: E402

LXQT = ("Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png", "beam.png",
        "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg")
ENLIGHTENMENT = ("Bamboo", "Foggy-Trees", "God-Rays", "Green-Maple", "Lichen-Branches", "Mountain", "Peaks",
                 "Red-Maple", "Sea-of-Lanterns", "Snow-Trees", "Spruce-Needles", "Sunset-Clouds", "White-Flower",
                 "Yellow-Flower")
PALAPELI = ("castle-maintenon", "cincinnati-bridge", "citrus-fruits", "european-honey-bee", "panther-chameleon-female")
TUXPAINT = ("burnt_bark", "cliff", "corn_maze", "jellyfish", "lighthouse", "mossy_log", "mudstone", "ocean_splash",
            "ocean_waves", "redwoods_above", "rocks", "sheep", "spiders_web", "sun_behind_clouds", "sun_behind_leaves")
EET_MAGIC = 0x1EE70F42
SHORT_SIDE = 512


def eet_entries(data: bytes) -> dict:
    """{name: stored bytes} of an Eet archive (uncompressed entries as stored; a compressed one as its bytes)."""
    if len(data) < 12:
        raise ValueError("not an Eet archive: shorter than its header")
    magic, count, _ = struct.unpack(">III", data[:12])
    if magic != EET_MAGIC or 12 + 24 * count > len(data):
        raise ValueError(f"not an Eet archive (magic {magic:#x}, {count} entries in {len(data)} bytes)")
    out = {}
    for i in range(count):
        off, size, _, name_off, name_size, _ = struct.unpack(">6I", data[12 + 24 * i:36 + 24 * i])
        if off + size > len(data) or name_off + name_size > len(data):
            raise ValueError(f"Eet entry {i} lies outside the file")
        out[data[name_off:name_off + name_size].rstrip(b"\0").decode()] = data[off:off + size]
    return out


def largest_image(edj: bytes) -> bytes:
    """The bytes of the largest picture among an Edje file's "edje/images/*" entries."""
    best, best_px = None, -1
    for name, blob in eet_entries(edj).items():
        if not name.startswith("edje/images/"):
            continue
        try:
            w, h = Image.open(io.BytesIO(blob)).size
        except OSError:
            continue  # Edje's own raw format, which Pillow does not read: the JPEG entries are the photographs
        if w * h > best_px:
            best, best_px = blob, w * h
    if best is None:
        raise ValueError("no picture Pillow can read among its edje/images entries")
    return best


def resized(img: Image.Image) -> Image.Image:
    """As `yoda data build` stores a photograph (yoda.photos.downscaled): short side SHORT_SIDE."""
    return downscaled(img, SHORT_SIDE)


def _run(cmd: list[str], hint: str = "", **kw) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, check=True), a failure ending the script with one line (the tool has printed its own
    error above it), not a CalledProcessError traceback."""
    try:
        return subprocess.run(cmd, check=True, **kw)
    except FileNotFoundError:
        sys.exit(f"unseen_photos.py: error: {cmd[0]} not found (a Debian tool){hint}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"unseen_photos.py: error: {' '.join(cmd)} failed (exit {e.returncode}){hint}")


def _deb(name: str, debs: Path) -> tuple[Path, str]:
    """(the package's .deb in ``debs``, downloaded if it is not there, and its version)."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        hint = f"; a {name}_*.deb (Debian 12) put in {debs} is used without a download"
        _run(["apt-get", "download", name], hint, cwd=debs)
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            sys.exit(f"unseen_photos.py: error: apt-get download {name} left no {name}_*.deb in {debs}")
    version = _run(["dpkg-deb", "-f", str(found[-1]), "Version"], capture_output=True, text=True).stdout.strip()
    return found[-1], version


def decoded(path: Path) -> Image.Image:
    """The picture in ``path`` decoded as `yoda data build` decodes a photograph (yoda.images.read_image: EXIF
    orientation, an ICC profile to sRGB, alpha on white, 16-bit samples mapped)."""
    return Image.fromarray(read_image(path, max_pixels=0))


def edje_picture(path: Path) -> Image.Image:
    """The photograph of an Edje file (largest_image), decoded as ``decoded`` decodes a file."""
    with tempfile.TemporaryDirectory() as tmp:
        blob = Path(tmp) / "picture"
        blob.write_bytes(largest_image(path.read_bytes()))
        return decoded(blob)


# each set: (package, folder inside it, [(file in it, output stem)], how a file becomes a picture)
SETS = {
    "7": (("lxqt-themes", "usr/share/lxqt/wallpapers", [(f, "lxqt-" + Path(f).stem) for f in LXQT], decoded),
          ("enlightenment-data", "usr/share/enlightenment/data/backgrounds",
           [(f"{n}.edj", "e-" + n) for n in ENLIGHTENMENT], edje_picture)),
    "10": (("palapeli-data", "usr/share/palapeli/collection", [(f"{n}.jpg", "pal-" + n) for n in PALAPELI], decoded),
           ("tuxpaint-data", "usr/share/tuxpaint/templates", [(f"{n}.jpg", "tux-" + n) for n in TUXPAINT], decoded)),
}


def build(out: Path, which: str = "7") -> list[dict]:
    """The PNGs and manifest.json of the set ``which`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for pkg, folder, files, picture in SETS[which]:
        deb, version = _deb(pkg, out / "debs")
        with tempfile.TemporaryDirectory() as root:
            _run(["dpkg-deb", "-x", str(deb), root])
            for name, stem in files:
                src = Path(root) / folder / name
                img = picture(src)
                small = resized(img)
                save_pil(small, str(out / f"{stem}.png"))
                manifest.append({"file": f"{stem}.png", "package": pkg, "version": version,
                                 "source": f"{folder}/{name}", "source_size": list(img.size),
                                 "source_sha256": file_sha256(str(src)),
                                 "sha256": file_sha256(str(out / f"{stem}.png")), "size": list(small.size)})
                print(f"{stem}: {img.size[0]}x{img.size[1]} -> {small.size[0]}x{small.size[1]}")
    atomic_write_text(str(out / "manifest.json"), json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the folder of PNGs (and debs/, manifest.json)")
    p.add_argument("--set", choices=sorted(SETS), default="7", help="benchmarks/QUALITY.md's section (default 7)")
    a = p.parse_args(argv)
    build(a.out, a.set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
