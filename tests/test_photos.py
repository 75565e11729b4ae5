"""`yoda data build` (yoda.photos): manifest, splits, resizing, and the held-out photographs refused in training."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from yoda import photos
from yoda.cli import main
from yoda.images import DataError, read_image


def _photo(path, w, h, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def fake_photos(tmp_path):
    """Three 'installed' photographs: one held-out name, two training names (one already small)."""
    src = tmp_path / "src"
    src.mkdir()
    held, train = photos.HELD_OUT_PHOTOS[0], [n for n in sorted(photos.PHOTOS) if n not in photos.HELD_OUT_PHOTOS]
    return {
        held: ("pkg-a", "1.0", _photo(src / "a.jpg", 300, 200, 0)),
        train[0]: ("pkg-a", "1.0", _photo(src / "b.png", 160, 240, 1)),
        train[1]: ("pkg-b", "2.3", _photo(src / "c.png", 90, 80, 2)),
    }


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_held_out_list_is_fixed_and_disjoint():
    assert len(photos.HELD_OUT_PHOTOS) == 10 and set(photos.HELD_OUT_PHOTOS) < set(photos.PHOTOS)
    assert photos.HELD_OUT_PHOTOS == tuple(sorted(photos.PHOTOS)[1::4])
    # whole photographs of several packages are held out, not crops of one
    assert len({photos.PHOTOS[n][0] for n in photos.HELD_OUT_PHOTOS}) >= 3


def test_build_writes_splits_sizes_and_manifest(tmp_path, fake_photos):
    out = tmp_path / "data"
    rows = photos.build(str(out), short_side=100, photos=fake_photos).rows
    man = json.loads((out / "manifest.json").read_text())
    assert [p["name"] for p in man["photos"]] == sorted(fake_photos)
    assert man["held_out"] == list(photos.HELD_OUT_PHOTOS) and man["short_side"] == 100
    by_name = {r.name: r for r in rows}
    for name, (pkg, version, src) in fake_photos.items():
        r = by_name[name]
        assert (r.package, r.version, r.source) == (pkg, version, str(src))
        assert r.split == ("heldout" if name in photos.HELD_OUT_PHOTOS else "train")
        assert r.file == f"{r.split}/{name}.png"
        assert r.source_sha256 == _sha(src) and r.sha256 == _sha(out / r.file)
        w, h = Image.open(src).size
        assert tuple(r.source_size) == (w, h)
        # downscaled to short side 100 (aspect kept), never upscaled
        want = (w, h) if min(w, h) <= 100 else (round(w * 100 / min(w, h)), round(h * 100 / min(w, h)))
        assert tuple(r.size) == want == Image.open(out / r.file).size
    # an image that needs no resize (the 90x80 one) is stored pixel for pixel
    small = next(r for r in rows if tuple(r.source_size) == (90, 80))
    np.testing.assert_array_equal(read_image(out / small.file), read_image(small.source))


def test_a_second_build_into_the_folder_is_refused_while_one_runs(tmp_path, fake_photos):
    """Two `yoda data build --out D` at once: the second deleted the first one's staging folder (as a leftover of
    a killed build), and the first then swapped in a train/ of 4-8 of its 40 photographs and reported success. A
    build now holds D: a second one is refused at once, and touches nothing."""
    from yoda._io import FolderInUse, folder_lock

    out = tmp_path / "data"
    out.mkdir()
    live = out / ".build-other"  # the staging folder of the build that runs
    live.mkdir()
    with folder_lock(out, "--out"):  # what the running build holds
        with pytest.raises(FolderInUse, match=r"--out .*data is in use by another yoda process; wait for it"):
            photos.build(str(out), short_side=100, photos=fake_photos)
    assert live.is_dir() and sorted(p.name for p in out.iterdir()) == [".build-other"]
    photos.build(str(out), short_side=100, photos=fake_photos)  # once it is free: the build runs (and recovers)
    assert (out / "manifest.json").exists() and not live.exists()


def test_build_is_deterministic(tmp_path, fake_photos):
    a = photos.build(str(tmp_path / "a"), short_side=100, photos=fake_photos).rows
    b = photos.build(str(tmp_path / "b"), short_side=100, photos=fake_photos).rows
    assert [r.sha256 for r in a] == [r.sha256 for r in b]


def test_rerun_replaces_the_splits_and_an_interrupted_one_keeps_the_last_build(tmp_path, fake_photos, monkeypatch):
    """A rerun with fewer photographs left the earlier build's files in train/ (trained on, but in no manifest);
    an interrupted rerun left the old manifest over new files. Now the splits are replaced whole, and until the
    new manifest is written the earlier build is whole (or there is no manifest)."""
    out = tmp_path / "data"
    photos.build(str(out), short_side=100, photos=fake_photos)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fewer = dict(list(sorted(fake_photos.items()))[:2])
    # interrupted while writing the second photograph: nothing of the earlier build changed
    real_save, calls = photos.save_pil, []

    def save(img, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(img, path)

    monkeypatch.setattr(photos, "save_pil", save)
    with pytest.raises(KeyboardInterrupt):
        photos.build(str(out), short_side=64, photos=fewer)
    # a full disk: named as the user knows it (the staging file it failed on is gone by then)
    calls.clear()
    from yoda._io import _named

    def full(img, path):  # as atomic_write says it: of the staging file, which is gone when this is read
        raise _named(OSError(28, "No space left"), path)

    monkeypatch.setattr(photos, "save_pil", full)
    with pytest.raises(OSError, match=f"] cannot write train/{sorted(fewer)[0]}.png in --out {out}: No space left$"):
        photos.build(str(out), short_side=64, photos=fewer)
    monkeypatch.setattr(photos, "save_pil", real_save)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # interrupted in the swap (the new manifest's write): undone, the earlier build is whole
    real_write = photos.atomic_write_text
    monkeypatch.setattr(photos, "atomic_write_text", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        photos.build(str(out), short_side=64, photos=fewer)
    monkeypatch.setattr(photos, "atomic_write_text", real_write)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # killed in the swap (no undo ran): the next build puts the earlier one back first, and leaves no staging
    stage = out / ".build-killed"
    stage.mkdir()
    (out / "manifest.json").rename(stage / "old-manifest.json")
    (out / "train").rename(stage / "old-train")
    (out / "train").mkdir()
    (out / "train" / f"{sorted(fewer)[1]}.png").write_bytes(b"half of a new build")
    photos._recover(str(out))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    built = photos.build(str(out), short_side=64, photos=fewer)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(["manifest.json"] + [r.file for r in built.rows]) and len(built.rows) == 2
    man = json.loads((out / "manifest.json").read_text())
    assert man["short_side"] == 64 and [p["name"] for p in man["photos"]] == sorted(fewer)
    assert man["not_installed"] == sorted(set(photos.PHOTOS) - set(fewer))


def test_an_unreadable_photograph_is_skipped_and_named(tmp_path, fake_photos, capsys, monkeypatch):
    """One truncated source stopped the build with no manifest; now it is left out, named in the manifest and
    on stderr (exit 2), and the others are written. Packages that are not installed are named."""
    name = sorted(fake_photos)[1]
    src = fake_photos[name][2]
    src.write_bytes(src.read_bytes()[:100])
    monkeypatch.setattr(photos, "installed_photos", lambda: fake_photos)
    out = tmp_path / "data"
    code = main(["data", "build", "--out", str(out), "--short-side", "100", "-q"])
    _, err = capsys.readouterr()
    assert code == 2 and f"could not be read and were left out: {name}" in err
    assert f"yoda: error: {name}: " in err, err  # named with its reason under -q too
    assert "photographs are not installed, from" in err and "plasma-workspace-wallpapers" in err
    man = json.loads((out / "manifest.json").read_text())
    assert list(man["skipped"]) == [name] and len(man["photos"]) == 2
    assert name not in {p["name"] for p in man["photos"]}


def test_build_checks_out_before_any_work(tmp_path, fake_photos, monkeypatch):
    """--out "" wrote into the current folder; a file at --out, out/heldout or out/manifest.json failed after
    some photographs were written; foreign files in out/train would be replaced with the folder."""
    monkeypatch.setattr(photos, "read_image", lambda *a: pytest.fail("work started"))
    (tmp_path / "f").write_text("x")
    (tmp_path / "h" / "heldout").mkdir(parents=True)
    (tmp_path / "h" / "heldout" / "mine.jpg").write_text("x")
    (tmp_path / "m" / "manifest.json").mkdir(parents=True)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "train").write_text("x")
    for out, message in (("", "--out must name a folder"), (str(tmp_path / "f"), "is a file, not a folder"),
                         (str(tmp_path / "h"), "holds files that `yoda data build` does not write \\(mine.jpg\\)"),
                         (str(tmp_path / "m"), "manifest.json is not a file"),
                         (str(tmp_path / "t"), "train is a file")):
        with pytest.raises(DataError, match=message):
            photos.build(out, photos=fake_photos)
    with pytest.raises(NotADirectoryError, match=r"--out .*f/sub: cannot create the folder, .*f is a file"):
        photos.build(str(tmp_path / "f" / "sub"), photos=fake_photos)
    assert sorted(os.listdir(tmp_path)) == ["f", "h", "m", "src", "t"]
    # `build b1/train` (a slip for `build b1`) nested a build in the build's train folder; a read-only train/ of
    # an earlier build was found after all the work (a build moves it aside): checked first
    b1 = tmp_path / "b1"
    (b1 / "train").mkdir(parents=True)
    (b1 / "manifest.json").write_text("{}")
    with pytest.raises(DataError, match=f"--out {b1 / 'train'} is a split of the build in {b1}: give {b1} to build"):
        photos.build(str(b1 / "train"), photos=fake_photos)
    checked = []
    monkeypatch.setattr(photos, "check_folder_writable", lambda f, what: checked.append(os.path.basename(f)))
    with pytest.raises(pytest.fail.Exception, match="work started"):
        photos.build(str(b1), photos=fake_photos)
    assert checked == ["train", "b1"]


def test_build_errors(tmp_path):
    with pytest.raises(DataError, match="apt-get install"):
        photos.build(str(tmp_path / "x"), photos={})
    with pytest.raises(ValueError, match="short_side"):
        photos.build(str(tmp_path / "x"), short_side=8, photos={})


def test_cli_data_build_without_packages_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(photos, "installed_photos", lambda: {})
    assert main(["data", "build", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "apt-get install" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_held_out_photographs_are_refused_for_training(tmp_path, fake_photos):
    out = tmp_path / "data"
    photos.build(str(out), short_side=100, photos=fake_photos)
    from yoda.heldout import held_out_lines

    def split(name):
        return [(str(p), read_image(p)) for p in sorted((out / name).iterdir())]

    assert held_out_lines(split("train")) == []  # the train split passes; each held-out photograph is named
    assert [line.split(" is named like ")[1].split(",")[0] for line in held_out_lines(split("heldout"))] == sorted(
        n for n in fake_photos if n in photos.HELD_OUT_PHOTOS)
    # the trainer refuses a folder with a held-out photograph in it
    from yoda.training import TrainConfig, Trainer

    cfg = TrainConfig(data={"source": str(out / "heldout"), "crop": 64, "scale": 4, "val_crops": 0},
                      model={"kind": "sr3", "in_channel": 6, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                             "channel_mults": [1, 2], "attn_res": [], "res_blocks": 1, "image_size": 64, "scale": 4})
    with pytest.raises(DataError, match=f"{photos.HELD_OUT_PHOTOS[0]}.png is named like {photos.HELD_OUT_PHOTOS[0]}, a "
                                        f"photograph held out for evaluation"):
        Trainer(cfg, str(tmp_path / "run"), progress=False)


def test_photos_source_needs_a_data_dir():
    from yoda.data import load_source

    with pytest.raises(DataError, match="--data-dir"):
        load_source("photos")


def test_packages_are_those_of_the_photographs(tmp_path):
    assert set(photos.PACKAGES) == {pkg for pkg, _ in photos.PHOTOS.values()}
    with pytest.raises(DataError, match="apt-get install " + " ".join(photos.PACKAGES).replace(".", r"\.") + "$"):
        photos.build(str(tmp_path / "out"), photos={})


def test_data_export_is_a_cli_command(tmp_path, capsys):
    """`python -m yoda.data export DIR` (what yoda train --help pointed to; replaced by this command) printed a
    dict, gave a traceback for a file in the way and exit 2 for --help; `yoda data export` did not exist."""
    from yoda.data import BUILTIN_TRAIN, HELD_OUT

    assert main(["data", "export", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert out == f"wrote {len(BUILTIN_TRAIN)} training and {len(HELD_OUT)} held-out images (scikit-image's) to " \
                  f"{tmp_path / 'd'}\n"
    assert sorted(os.listdir(tmp_path / "d" / "heldout")) == sorted(f"{n}.png" for n in HELD_OUT)
    (tmp_path / "f").write_text("x")
    assert main(["data", "export", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err == f"yoda: error: {tmp_path / 'f'} is a file, not a folder\n"
    assert main(["data", "export", "--help"]) == 0 and "usage: yoda data export" in capsys.readouterr().out


def test_data_export_is_whole_or_nothing_and_keeps_out_of_other_folders(tmp_path, capsys, monkeypatch):
    """`yoda data export` wrote straight into DIR: an interrupt left empty folders or a partial set (which
    `yoda train --data-dir` then used silently), and an export into a `yoda data build` folder merged into it,
    leaving its manifest wrong. Now it stages and swaps as a build does, and refuses a build's folder and
    foreign files."""
    import yoda.images
    from yoda.data import BUILTIN_TRAIN

    d = tmp_path / "d"
    assert main(["data", "export", str(d)]) == 0
    files = lambda: {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    before = files()
    real, n = yoda.images.save_pil, []

    def interrupted(img, path):
        n.append(path)
        if len(n) == len(BUILTIN_TRAIN) + 1:  # the first held-out image
            raise KeyboardInterrupt
        return real(img, path)

    monkeypatch.setattr(yoda.images, "save_pil", interrupted)
    for folder in (d, tmp_path / "new"):
        n.clear()
        assert main(["data", "export", str(folder)]) == 130
    assert files() == before and sorted(os.listdir(d)) == ["heldout", "train"]  # no stage left
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(yoda.images, "save_pil", real)
    assert main(["data", "export", str(d)]) == 0 and files() == before  # again into its own folder
    capsys.readouterr()
    (d / "manifest.json").write_text("{}")
    assert main(["data", "export", str(d)]) == 2
    assert "holds a `yoda data build` (manifest.json)" in capsys.readouterr().err
    (d / "manifest.json").unlink()
    (d / "train" / "mine.jpg").write_bytes(b"x")
    assert main(["data", "export", str(d)]) == 2
    assert "train holds files that `yoda data export` does not write (mine.jpg)" in capsys.readouterr().err
    assert (d / "train" / "mine.jpg").exists()


def test_data_commands_name_their_folder_alike(tmp_path, capsys):
    """`yoda data build --out DIR` but `yoda data export DIR`: each refused the other's form. Both take either,
    and exactly one of them."""
    assert main(["data", "export", "--out", str(tmp_path / "e")]) == 0
    assert os.path.isdir(tmp_path / "e" / "heldout")
    capsys.readouterr()
    for args in (["data", "export"], ["data", "build", "-q"], ["data", "build", str(tmp_path / "a"), "-o",
                                                                 str(tmp_path / "b")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"yoda: error: yoda data {args[1]}: give the output folder once, as DIR or as --out DIR" in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_names_the_file_the_user_knows(tmp_path, monkeypatch):
    """`yoda data export` on a full disk named its staging file (DIR/.export-XXXX/train/coins.png), gone when the
    message is read."""
    import yoda.images
    from yoda._io import _named
    from yoda.data import export_builtin

    def full(img, path):
        raise _named(OSError(28, "No space left on device"), path)

    monkeypatch.setattr(yoda.images, "save_pil", full)
    out = tmp_path / "dx"
    with pytest.raises(OSError, match=r"] cannot write (.+)/(train|heldout)/(\w+)\.png: No space left on device$") as e:
        export_builtin(str(out))
    assert str(e.value).startswith(f"[Errno 28] cannot write {out}{os.sep}") and ".export-" not in str(e.value)
    assert isinstance(e.value, OSError) and e.value.errno == 28 and not out.exists()
