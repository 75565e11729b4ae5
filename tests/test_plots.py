"""yoda.plots (`yoda plot`): single points are drawn, ranges come from finite values only, points at the extremes
stay inside the frame, the legend never runs into the line-style note. Checked on the pixels of the written PNG and
on the strings drawn, and the range and legend helpers with exact values."""

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from yoda import plots
from yoda.drawing import COLOURS, GRID, text_wh

HEADER = "step,loss,lr,time,val_psnr_plain,val_psnr_yoda\n"
W, H = 900, 360
# the panels of the default size with one legend row: (x0, y0, x1, y1); the data stay M px inside the frame
LEFT, RIGHT, M = (50, 30, 435, 300), (500, 30, 885, 300), 6
NOTE = "PSNR: solid, dots = plain sampling; dashed, rings = YODA"
TICKS_04_05 = ["0.40", "0.42", "0.44", "0.46", "0.48", "0.50"]  # the y ticks of data from 0.4 to 0.5


def log(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text(HEADER + "".join(r + "\n" for r in rows))
    return str(p)


def plot(tmp_path, paths, labels=None, monkeypatch=None):
    """The plot as an array, and the strings drawn (with their positions) when monkeypatch is given."""
    texts = []
    if monkeypatch is not None:
        orig = ImageDraw.ImageDraw.text

        def text(self, xy, s, *a, **k):
            texts.append((xy, s))
            return orig(self, xy, s, *a, **k)

        monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    out = tmp_path / "curves.png"
    plots.plot_logs(paths, labels or [f"run{i}" for i in range(len(paths))], str(out))
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (H, W, 3)
    return img, texts


def colour_mask(img, colour):
    return np.all(img == np.asarray(colour, dtype=np.uint8), axis=-1)


def near(mask, x, y, r=1):
    """mask has a pixel within r px of (x, y)."""
    return mask[y - r:y + r + 1, x - r:x + r + 1].any()


def strings(texts, box):
    """The strings drawn with their anchor inside box (x0, y0, x1, y1)."""
    return [s for (x, y), s in texts if box[0] <= x <= box[2] and box[1] <= y <= box[3]]


def test_extent():
    assert plots._extent([3.0, 1.0, 2.0]) == (1.0, 3.0)
    assert plots._extent([0.5]) == pytest.approx((0.475, 0.525))  # a single value: +- 5 %
    assert plots._extent([10.0, 10.0]) == (9.5, 10.5)
    assert plots._extent([0.0]) == (-1.0, 1.0)  # +- 1 around 0
    assert plots._extent([-2.0]) == pytest.approx((-2.1, -1.9))
    assert plots._extent([math.nan, 1.0, math.inf, 3.0, -math.inf]) == (1.0, 3.0)  # finite values only
    assert plots._extent([math.nan, math.inf]) is None
    assert plots._extent([]) is None


def test_series_splits_at_non_finite_values():
    rows = [{"step": "1", "loss": "0.5"}, {"step": "2", "loss": "nan"}, {"step": "3", "loss": "inf"},
            {"step": "4", "loss": "0.4"}, {"step": "5", "loss": "0.3"}, {"step": "6", "loss": ""},
            {"step": "7", "loss": "0.2"}]
    assert plots._series(rows, "loss") == ([[(1.0, 0.5)], [(4.0, 0.4), (5.0, 0.3), (7.0, 0.2)]], True)
    assert plots._series(rows[1:3], "loss") == ([], True)  # values, none finite
    assert plots._series(rows[5:6], "loss") == ([], False)  # no value at all
    assert plots._series(rows, "val_psnr_plain") == ([], False)


def test_legend_layout():
    # three 100 px labels in 60..500: 60 + 136 + 24 = 220, 380; the third (136 px) does not fit -> next row
    pos, note, rows = plots._legend_layout([100, 100, 100], 150, 60, 500)
    assert pos == [(60, 0), (220, 0), (60, 1)]
    assert note == (350, 1) and rows == 2  # the note, right-aligned, fits after the third entry (220 + 150 < 500)
    pos, note, rows = plots._legend_layout([10], 150, 60, 500)
    assert pos == [(60, 0)] and note == (350, 0) and rows == 1
    pos, note, rows = plots._legend_layout([100, 100], 150, 60, 500)  # 380 + 150 > 500: the note gets a row
    assert pos == [(60, 0), (220, 0)] and note == (350, 1) and rows == 2


def test_single_row_is_a_marker_in_the_middle(tmp_path, monkeypatch):
    img, texts = plot(tmp_path, [log(tmp_path, "one.csv", ["10,0.5,0.0002,1.0,,"])], monkeypatch=monkeypatch)
    x0, y0, x1, y1 = LEFT
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2  # a single value sits in the middle of both axes
    blue = colour_mask(img, COLOURS[0])
    assert blue[cy - 1:cy + 2, cx - 1:cx + 2].all()
    assert blue[y0:y1, x0:x1].sum() >= 20  # a dot, not a pixel
    # the axes name the point's own step and loss, nothing invented (the old plot said "11 steps" and 1.5)
    assert sorted(strings(texts, (0, y0, x0, y1))) == ["0.5"]
    assert sorted(strings(texts, (x0, y1, x1, y1 + 16))) == ["10"]
    assert "no data" in strings(texts, RIGHT)  # nothing validated yet


def test_single_validation_point_has_no_invented_step(tmp_path, monkeypatch):
    """Both panels share the step axis (a step sits at the same x in each): the single validation point at step 3
    is at the right end of steps 1..3, and no step beyond the log's is invented (the old plot had "4 steps")."""
    rows = ["1,0.5,0.0002,1.0,,", "2,0.45,0.0002,1.0,,", "3,0.4,0.0002,1.0,20,21"]
    img, texts = plot(tmp_path, [log(tmp_path, "three.csv", rows)], monkeypatch=monkeypatch)
    x0, y0, x1, y1 = RIGHT
    assert strings(texts, (x0, y1, x1, y1 + 16)) == ["1", "2", "3"]
    assert strings(texts, (LEFT[0], y1, LEFT[2], y1 + 16)) == ["1", "2", "3"]
    blue = colour_mask(img, COLOURS[0])
    cx = x1 - M
    assert blue[y1 - M, cx] and near(blue, cx, y0 + M, r=3)  # 20 at the bottom, 21 at the top, inside the frame
    assert (img[y0 + M, cx] == 255).all()  # YODA's lone point is a ring, plain's a dot: told apart without a line
    assert strings(texts, (x0 - 50, y0, x0, y1)) == ["20.0", "20.2", "20.4", "20.6", "20.8", "21.0"]


def test_extreme_points_stay_inside_the_frame(tmp_path):
    rows = ["10,0.5,0.0002,1.0,20,20.5", "20,0.4,0.0002,1.0,,", "30,0.3,0.0002,1.0,22,23"]
    img, _ = plot(tmp_path, [log(tmp_path, "a.csv", rows)])
    blue = colour_mask(img, COLOURS[0])
    for x0, y0, x1, y1 in (LEFT, RIGHT):
        frame = np.zeros_like(blue)
        frame[y0, x0:x1 + 1] = frame[y1, x0:x1 + 1] = frame[y0:y1 + 1, x0] = frame[y0:y1 + 1, x1] = True
        assert not (blue & frame).any()  # no point or line on the frame
        assert (img[frame] == 0).all()  # which is whole
        panel = blue[y0 - 20:y1 + 20, x0 - 20:x1 + 20]
        ys, xs = np.nonzero(panel)
        assert xs.min() + x0 - 20 > x0 and xs.max() + x0 - 20 < x1
        assert ys.min() + y0 - 20 > y0 and ys.max() + y0 - 20 < y1
    # the extremes are drawn M px inside: the first loss (the max) top left, the last (the min) bottom right
    x0, y0, x1, y1 = LEFT
    assert near(blue, x0 + M, y0 + M) and near(blue, x1 - M, y1 - M)
    # the PSNR markers at the corners are whole: a 5x5 dot around each
    x0, y0, x1, y1 = RIGHT
    assert blue[y1 - M - 2:y1 - M + 3, x0 + M - 2:x0 + M + 3].sum() >= 13
    assert blue[y0 + M - 2:y0 + M + 3, x1 - M - 2:x1 - M + 3].sum() >= 13


def test_non_finite_losses_are_gaps(tmp_path, monkeypatch):
    rows = ["1,0.5,0.0002,1.0,,", "2,nan,0.0002,1.0,,", "3,inf,0.0002,1.0,20,21", "4,0.4,0.0002,1.0,,"]
    img, texts = plot(tmp_path, [log(tmp_path, "nan.csv", rows)], monkeypatch=monkeypatch)
    blue = colour_mask(img, COLOURS[0])
    x0, y0, x1, y1 = LEFT
    assert not blue[:y0].any()  # nothing through the titles (the old plot drew vertical lines there)
    ys, xs = np.nonzero(blue[:y1 + 1, :(x1 + RIGHT[0]) // 2])
    assert xs.min() > x0 and xs.max() < x1 and ys.min() > y0  # the loss panel's blue is inside it
    assert not blue[y0 + 1:y1, x0 + 20:x1 - 20].any()  # 1 and 4 are not joined across the nan and inf
    # but both are drawn, as dots: 0.5 at step 1 (top left), 0.4 at step 4 (bottom right)
    assert blue[y0 + M - 2:y0 + M + 3, x0 + M - 2:x0 + M + 3].sum() >= 13
    assert blue[y1 - M - 2:y1 - M + 3, x1 - M - 2:x1 - M + 3].sum() >= 13
    drawn = [s for _, s in texts]
    assert not any("inf" in s.lower() or "nan" in s.lower() for s in drawn if s != "run0")
    assert strings(texts, (0, y0, x0, y1)) == TICKS_04_05
    assert strings(texts, (x0, y1, x1, y1 + 16)) == ["1", "2", "3", "4"]


def test_a_gap_splits_the_line(tmp_path):
    rows = [f"{s},{'nan' if s == 3 else 0.5},0.0002,1.0,," for s in range(1, 6)]  # steps 1..5, flat loss
    img, _ = plot(tmp_path, [log(tmp_path, "gap.csv", rows)])
    blue = colour_mask(img, COLOURS[0])
    x0, y0, x1, y1 = LEFT
    fx = lambda s: round(x0 + M + (s - 1) / 4 * (x1 - x0 - 2 * M))  # noqa: E731
    col = lambda s: blue[y0 + 1:y1, fx(s)].any()  # noqa: E731
    assert col(1.5) and col(4.5) and not col(3) and not col(2.5) and not col(3.5)


def test_series_without_finite_values_is_named(tmp_path, monkeypatch):
    good = log(tmp_path, "good.csv", ["1,0.5,0.0002,1.0,20,21", "2,0.4,0.0002,1.0,21,22"])
    bad = log(tmp_path, "bad.csv", ["1,nan,0.0002,1.0,,", "2,inf,0.0002,1.0,nan,nan"])
    img, texts = plot(tmp_path, [good, bad], ["good", "bad"], monkeypatch=monkeypatch)
    assert strings(texts, LEFT) == ["bad: no finite loss"]
    assert sorted(strings(texts, RIGHT)) == ["bad: no finite val_psnr_plain", "bad: no finite val_psnr_yoda"]
    x0, y0, x1, y1 = LEFT
    assert strings(texts, (0, y0, x0, y1)) == TICKS_04_05  # the range of the finite log
    img, texts = plot(tmp_path, [bad], ["bad"], monkeypatch=monkeypatch)
    assert not colour_mask(img, COLOURS[0])[:LEFT[3] + 1].any()  # nothing drawn, no invented axes


@pytest.mark.parametrize("labels", [["run-one", "run-two-longer-label", "run-three", "run-four"],
                                    ["a-rather-long-label-for-the-first-run", "second-run-with-a-long-name",
                                     "third", "fourth-run-name", "fifth", "sixth-and-last"],
                                    [f"run{i}" for i in range(8)]])
def test_legend_does_not_overlap_the_note(tmp_path, labels):
    rows = ["10,0.5,0.0002,1.0,,", "20,0.4,0.0002,1.0,24.5,24.7", "40,0.3,0.0002,1.0,25.1,25.0"]
    paths = [log(tmp_path, f"{i}.csv", rows) for i in range(len(labels))]
    img, _ = plot(tmp_path, paths, labels)
    d, f = ImageDraw.Draw(Image.new("RGB", (W, H))), plots._font()
    pos, (nx, nrow), nrows = plots._legend_layout([text_wh(d, s, f)[0] for s in labels], text_wh(d, NOTE, f)[0],
                                                  60, W - 15)
    ly = H - 10 - 18 * nrows
    boxes = [d.textbbox((x + 36, ly + 18 * row), s, font=f) for s, (x, row) in zip(labels, pos)]
    boxes = [(x, b[1], b[2], b[3]) for (x, _), b in zip(pos, boxes)]  # from the line sample to the label's end
    note = d.textbbox((nx, ly + 18 * nrow), NOTE, font=f)
    for i, a in enumerate(boxes + [note]):
        assert a[2] <= W and a[3] <= H, a
        for b in (boxes + [note])[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)  # disjoint
    # on the picture: the note's box holds the note alone (as drawn on a white image), no legend colour
    alone = Image.new("RGB", (W, H), "white")
    ImageDraw.Draw(alone).text((nx, ly + 18 * nrow), NOTE, fill=(0, 0, 0), font=f)
    l, t, r, b = note
    assert (img[t:b, l:r] == np.asarray(alone)[t:b, l:r]).all()
    for c in COLOURS:
        assert not colour_mask(img, c)[t:b, l:r].any()
    # every legend entry's line sample is drawn, in its colour, left of its label
    for i, (x, row) in enumerate(pos):
        y = ly + 18 * row + 6
        assert colour_mask(img, COLOURS[i % len(COLOURS)])[y, x + 2:x + 29].all(), labels[i]
    # the panels are above the legend and their tick labels
    assert ly - 32 <= LEFT[3]
    # one colour a log (eight logs drew the seventh and eighth in the first two's colours)
    assert len({COLOURS[i % len(COLOURS)] for i in range(len(labels))}) == len(labels)


@pytest.mark.parametrize("row, message", [("1,abc,0.0002,1.0,,", "line 3: loss is 'abc', not a number"),
                                          (",0.5,0.0002,1.0,,", "line 3: step is '', not a number"),
                                          ("2,0.4,0.0002,1.0,x,", "line 3: val_psnr_plain is 'x', not a number")])
def test_a_cell_that_is_not_a_number_names_its_line(tmp_path, row, message):
    """A hand-edited or truncated log said "could not convert string to float" without a file or line."""
    path = log(tmp_path, "bad.csv", ["1,0.5,0.0002,1.0,,", row])
    with pytest.raises(ValueError, match=f"bad.csv {message}$"):
        plots.read_log(path)


def test_a_log_saved_by_a_spreadsheet_with_a_byte_order_mark_is_read(tmp_path):
    """A log saved from a spreadsheet starts with a UTF-8 byte-order mark: its first column read as "\ufeffstep",
    and plot said it was not a training log (needs step and loss columns)."""
    path = log(tmp_path, "plain.csv", ["1,0.5,0.0002,1.0,,", "2,0.4,0.0001,2.0,,"])
    marked = tmp_path / "marked.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + open(path, "rb").read())
    assert plots.read_log(str(marked)) == plots.read_log(path) and plots.read_log(path)[1]["loss"] == "0.4"


def test_a_log_that_is_a_pipe_or_a_device_is_refused(tmp_path):
    """`yoda plot FIFO` waited forever in open(), `yoda plot /dev/zero` read until the memory ran out."""
    import errno
    import os
    import threading
    import time

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)

    def release():  # a reader blocked in open() (the bug) is let go within 2 s, so that the test fails, not hangs
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError as e:  # ENXIO: no reader yet
                if e.errno != errno.ENXIO:
                    return
                time.sleep(0.05)

    threading.Thread(target=release, daemon=True).start()
    for path in (str(fifo), "/dev/zero"):
        with pytest.raises(ValueError, match=f"^{path} is not a regular file \\(a device or a pipe\\)"):
            plots.read_log(path)


def test_default_labels_tell_runs_apart(tmp_path):
    """Two logs of one folder were both labelled with the folder's name; a run folder stands for its log.csv."""
    j = lambda *p: str(tmp_path.joinpath(*p))  # noqa: E731
    assert plots.default_labels([j("runs", "a", "log.csv"), j("runs", "b", "log.csv")]) == ["a", "b"]
    assert plots.default_labels([j("sub", "a.csv"), j("sub", "b.csv")]) == ["a.csv", "b.csv"]
    assert plots.default_labels([j("x", "r", "log.csv"), j("y", "r", "log.csv")]) == ["x/r", "y/r"]
    assert plots.default_labels([j("same.csv"), j("same.csv")])[0].endswith("same.csv")  # no endless loop
    (tmp_path / "run").mkdir()
    assert plots.log_path(j("run")) == j("run", "log.csv") and plots.log_path(j("x.csv")) == j("x.csv")
    with pytest.raises(ValueError, match=r"^labels: give one label per log \(1 logs, 2 labels\)"):
        plots.plot_logs([j("x.csv")], ["a", "b"], j("o.png"))


def test_one_log_given_twice_is_refused(tmp_path):
    """One log under two names (or one name twice) drew one curve over the other under two legend entries."""
    (tmp_path / "run").mkdir()
    path = log(tmp_path / "run", "log.csv", ["1,0.5,0.0002,1.0,,"])
    other = log(tmp_path, "other.csv", ["1,0.5,0.0002,1.0,,"])
    alias = plots.log_path(str(tmp_path / "run" / ".." / "run"))
    for twice, first in (([path, other, alias], path), ([other, other], other)):
        with pytest.raises(ValueError, match=f"^logs: {first} and {twice[-1]} are the same log; give each once$"):
            plots.plot_logs(twice, [f"r{i}" for i in range(len(twice))], str(tmp_path / "o.png"))
    assert not (tmp_path / "o.png").exists()


def test_round_ticks_with_grid_lines_at_their_values(tmp_path, monkeypatch):
    """The axes were labelled at the data's min and max only; now at round values inside the range, each with a
    grid line at its own height, and only whole steps on the x axis."""
    rows = [f"{s},{1 - s / 1000:.3f},0.0002,1.0,," for s in range(0, 1001, 50)]  # loss 1 -> 0 over 1000 steps
    img, texts = plot(tmp_path, [log(tmp_path, "lin.csv", rows)], monkeypatch=monkeypatch)
    x0, y0, x1, y1 = LEFT
    assert strings(texts, (0, y0, x0, y1)) == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert strings(texts, (x0, y1, x1, y1 + 16)) == ["0", "200", "400", "600", "800", "1000"]
    grid = colour_mask(img, GRID)
    tick_ys = [y1 - M - v * (y1 - y0 - 2 * M) for v in (0, 0.2, 0.4, 0.6, 0.8, 1)]
    for y in tick_ys[1:-1]:  # the loss falls from top left to bottom right: the grid shows left of it
        assert grid[round(y) - 1:round(y) + 2, x0 + 2:x0 + 40].any(axis=0).all(), y
    rows_with_grid = np.nonzero(grid[:, x0 + 2])[0]
    assert len(rows_with_grid) and all(min(abs(r - y) for y in tick_ys) <= 1 for r in rows_with_grid)
    assert plots.axis_ticks(0, 12, integers=True) == [(0, "0"), (5, "5"), (10, "10")]  # 2.5 apart: no half steps
    assert plots.axis_ticks(3, 3) == [(3, "3")]
    # labels carry the decimals of the spacing: 4 significant digits gave 30.12, 30.12, 30.13, 30.13 here and
    # five times "100000" for steps 100000..100040
    assert [s for _, s in plots.axis_ticks(30.121, 30.129)] == ["30.122", "30.124", "30.126", "30.128"]
    assert [s for _, s in plots.axis_ticks(100000, 100040, integers=True)] == ["100000", "100010", "100020",
                                                                               "100030", "100040"]


def test_a_loss_over_decades_is_drawn_on_a_log_axis(tmp_path, monkeypatch):
    """A real run's loss falls by decades: on a linear axis everything after the first hundred steps was a flat
    line at 0. From LOG_SCALE_SPAN (30x) on, the loss axis is logarithmic, ticked at the powers of ten."""
    rows = [f"{s},{10.0 * 0.5 ** (s - 1):.6g},0.0002,1.0,," for s in range(1, 12)]  # 10 down to ~0.0098
    img, texts = plot(tmp_path, [log(tmp_path, "a.csv", rows)], monkeypatch=monkeypatch)
    x0, y0, x1, y1 = LEFT
    assert "training loss (log scale)" in strings(texts, (0, 0, x1, y0))
    assert strings(texts, (0, y0 - 10, x0, y1)) == ["0.01", "0.1", "1", "10"]
    ticks = {s: y for (x, y), s in texts if x < x0 and s in ("0.01", "0.1", "1", "10")}
    gaps = [ticks[a] - ticks[b] for a, b in (("0.01", "0.1"), ("0.1", "1"), ("1", "10")) if a in ticks and b in ticks]
    assert gaps and max(gaps) - min(gaps) <= 1  # equal spacing per decade: a log axis
    texts.clear()  # a loss within a factor of 30 stays linear
    plot(tmp_path, [log(tmp_path, "b.csv", ["1,0.5,0.0002,1.0,,", "2,0.4,0.0002,1.0,,"])], monkeypatch=monkeypatch)
    assert "training loss" in [s for _, s in texts] and not any("log scale" in s for _, s in texts)
    texts.clear()  # one low logging window (0.0005 among values near 0.16) no longer puts the panel on a log axis
    rows = [f"{s},{0.0005 if s == 7 else 0.16 + 0.001 * s:.6g},0.0002,1.0,," for s in range(1, 21)]
    plot(tmp_path, [log(tmp_path, "c.csv", rows)], monkeypatch=monkeypatch)
    assert "training loss" in [s for _, s in texts] and not any("log scale" in s for _, s in texts)


def test_log_ticks():
    assert [s for _, s in plots.log_ticks(0.0098, 10.0)] == ["0.01", "0.1", "1", "10"]
    assert [s for _, s in plots.log_ticks(0.3, 12.0)] == ["1", "10"]
    assert [s for _, s in plots.log_ticks(0.15, 0.9)] == ["0.2", "0.5"]  # no power of ten inside: 2 and 5
    assert [v for v, _ in plots.log_ticks(0.31, 0.45)] == [0.31, 0.45]  # none at all: the ends
    # a diverged loss (1e30 beside 1e-6) labelled all 37 decades, one over the other, as 100000 beside 1e+06
    assert [s for _, s in plots.log_ticks(1e-6, 1e30)] == ["1e0", "1e10", "1e20", "1e30"]
    assert [s for _, s in plots.log_ticks(0.001, 2e9)] == ["1e-2", "1e0", "1e2", "1e4", "1e6", "1e8"]
    assert [s for _, s in plots.log_ticks(1e-4, 1e2)] == ["0.0001", "0.001", "0.01", "0.1", "1", "10", "100"]


def test_the_loss_is_described_from_the_runs_config(tmp_path, monkeypatch):
    """The loss title said "training loss" whatever it was; runs of different losses (L1 eps vs a YODA mask_loss
    L2 x0, whose mean is over fewer pixels) are not comparable, and the legend now says which is which."""
    import json

    rows = ["1,0.5,0.0002,1.0,,", "2,0.4,0.0002,1.0,,"]
    paths = []
    for name, loss in (("a", {"loss": "l1", "target": "eps", "mask_loss": False}),
                       ("b", {"loss": "l2", "target": "x0", "mask_loss": True})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"loss": loss}))
        paths.append(log(tmp_path / name, "log.csv", rows))
    assert plots.loss_description(paths[0]) == "L1 on eps"
    assert plots.loss_description(paths[1]) == "L2 on x0, active pixels only"
    assert plots.loss_description(log(tmp_path, "lone.csv", rows)) == ""  # no config next to it
    # how the validation PSNR was measured (one 32² crop's PSNR jumps by dB between evaluations)
    for name, n, size, steps in (("a", 1, 32, 4), ("b", 4, 64, 20)):
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        cfg.update(data={"val_crops": n, "val_crop": size}, val_steps=steps)
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        log(tmp_path / name, "log.csv", ["1,0.5,0.0002,1.0,27.9,28.0", "2,0.4,0.0002,1.0,30.7,30.6"])
    assert plots.validation_description(paths[0]) == "1 crop of 32x32, DDIM 4 steps"
    assert plots.validation_description(paths[1]) == "4 crops of 64x64, DDIM 20 steps"
    _, texts = plot(tmp_path, paths[1:], monkeypatch=monkeypatch)
    assert "validation PSNR (dB): 4 crops of 64x64, DDIM 20 steps" in [s for _, s in texts]
    texts.clear()
    plot(tmp_path, paths, monkeypatch=monkeypatch)  # two runs measured differently: the bare title, and the
    assert "validation PSNR (dB)" in [s for _, s in texts]  # legend says which is which (it said nothing)
    _, texts = plot(tmp_path, paths[:1], monkeypatch=monkeypatch)
    assert "training loss: L1 on eps" in [s for _, s in texts]
    texts.clear()
    plot(tmp_path, paths, monkeypatch=monkeypatch)
    drawn = [s for _, s in texts]
    assert "training loss" in drawn and "run0 (L1 on eps; 1 crop of 32x32, DDIM 4 steps)" in drawn
    assert "run1 (L2 on x0, active pixels only; 4 crops of 64x64, DDIM 20 steps)" in drawn
    # a run that never validated (val_every 0, or no validation crops) named the crops it never sampled; one
    # resumed with val_every 0 after it validated keeps what its PSNRs were measured on
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**cfg, "val_every": 0}))
    assert plots.validation_description(paths[0]) == "1 crop of 32x32, DDIM 4 steps"
    log(tmp_path / "a", "log.csv", rows)
    assert plots.validation_description(paths[0]) == "not validated"
    (tmp_path / "a" / "config.json").write_text(json.dumps({**cfg, "data": {**cfg["data"], "val_crops": 0}}))
    assert plots.validation_description(paths[0]) == "not validated"
    texts.clear()
    plot(tmp_path, paths, monkeypatch=monkeypatch)
    assert "run0 (L1 on eps; not validated)" in [s for _, s in texts]
    # the dashed YODA curve's attention and lower bound (validation samples with the config's)
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**cfg, "attention": "dino-vits8:/w/dino.pth",
                                                            "loss": {**cfg["loss"], "lower_bound": 0.6}}))
    assert plots.validation_description(paths[1]) == "4 crops of 64x64, DDIM 20 steps, YODA dino-vits8 l = 0.6"


def test_the_plot_commands_line_escapes_the_file_name(tmp_path, capsys):
    """`yoda plot LOG -o $'red\\e[31mX.png'` wrote the escape sequence to the terminal in its "wrote" line, where
    upscale's lines escape names (errors.printable); plot, figures, demo and data's lines do too now."""
    from yoda.cli import main

    out = tmp_path / "red\x1b[31mX.png"
    assert main(["plot", log(tmp_path, "log.csv", ["1,0.5,0.001,1.0,,", "2,0.4,0.001,2.0,,"]), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert out.is_file() and said == f"wrote {tmp_path}/red\\x1b[31mX.png\n", said
