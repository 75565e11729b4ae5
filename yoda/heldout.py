"""Held-out images recognised by their content: a training image that is a copy of one (renamed, resized,
re-encoded, grey, mirrored, turned, brightened) is refused whatever its name, so TRAINING.md's "the model never saw
them" holds.

Each held-out image (scikit-image's yoda.data.HELD_OUT, the photographs of yoda.photos.HELD_OUT_PHOTOS) is kept
here as its aspect ratio and a THUMB x THUMB grey thumbnail of the whole picture (Pillow's box filter, 256
bytes; ``signature``). Thumbnails are compared as shapes: each minus its mean, over its standard deviation
(``standardised``). An image is a copy when, in one of its eight orientations (turned by a multiple of 90 degrees,
mirrored or not: a box-filtered thumbnail turns with its image), its aspect is within ASPECT_TOLERANCE of one's and
its standardised thumbnail within COPY_DISTANCE of that one's (mean absolute difference). Measured when the
signatures were made: copies resized to 300 pixels wide and saved as JPEG quality 50 are within 0.047, and copies
darkened to 5% of their brightness are recognised; the nearest other picture of the same aspect, in any
orientation, among the 40 photographs and scikit-image's images is 0.51 away, and a smooth grey gradient 0.78 from
the flattest signature (mate-Wood, whose thumbnail is 6 levels from a plane). A flat image (thumbnail deviation
below FLAT_LEVELS) is no copy. A crop of a held-out image is not recognised.
"""

from __future__ import annotations

import base64
import functools
import os
import warnings
from typing import Optional

import numpy as np

THUMB = 16
COPY_DISTANCE = 0.2  # of standardised thumbnails
FLAT_LEVELS = 0.25  # a thumbnail deviating less (8-bit levels) has no shape to compare: the signatures' least is 8.3
ASPECT_TOLERANCE = 0.02  # relative: a resize rounds each side to whole pixels


def signature(a: np.ndarray) -> tuple[float, np.ndarray]:
    """(width / height, THUMB x THUMB float32 grey thumbnail) of a uint8 (H, W, 3) or (H, W) image: ITU-R 601
    luma, box-filtered, unrounded (a dark copy keeps its shape)."""
    from PIL import Image

    grey = a.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]) if a.ndim == 3 else a.astype(np.float32)
    return a.shape[1] / a.shape[0], np.asarray(Image.fromarray(grey, "F").resize((THUMB, THUMB), Image.Resampling.BOX))


def standardised(thumb: np.ndarray) -> Optional[np.ndarray]:
    """(thumb - its mean) / its standard deviation; None for a flat one (deviation below FLAT_LEVELS)."""
    sd = float(thumb.std())
    return None if sd < FLAT_LEVELS else (thumb - thumb.mean()) / sd


@functools.cache
def _held_out_shapes() -> dict[str, tuple[float, np.ndarray]]:
    """SIGNATURES decoded and standardised, once: {name: (aspect, standardised thumbnail)}."""
    return {name: (aspect, standardised(np.frombuffer(base64.b64decode(data), np.uint8).reshape(THUMB, THUMB) * 1.0))
            for name, (aspect, data) in SIGNATURES.items()}


def _orientations(a: np.ndarray) -> Optional[list[tuple[float, np.ndarray]]]:
    """(aspect, standardised thumbnail) of ``a`` in its eight orientations; None for a flat image."""
    aspect, thumb = signature(a)
    mine = standardised(thumb)
    if mine is None:
        return None
    return [(aspect if k % 2 == 0 else 1 / aspect, np.rot90(m, k)) for k in range(4) for m in (mine, mine[:, ::-1])]


def held_out_copy(a: np.ndarray) -> Optional[str]:
    """The name of the held-out image ``a`` is a copy of, else None."""
    return _held_out_name(_orientations(a))


def _held_out_name(turns) -> Optional[str]:
    """held_out_copy of an image's _orientations."""
    for name, (their_aspect, theirs) in _held_out_shapes().items() if turns else ():
        if any(abs(asp / their_aspect - 1) <= ASPECT_TOLERANCE and float(np.abs(m - theirs).mean()) <= COPY_DISTANCE
               for asp, m in turns):
            return name
    return None


def shared_images(items, others) -> list[tuple[str, str]]:
    """(name in items, name in others) for each image of ``items`` that looks like a copy of one of ``others`` (as
    held_out_copy tells copies: renamed, resized, re-encoded, grey, mirrored, turned, brightened; but also pictures
    of one layout, e.g. two skies over different ground: a 16 x 16 thumbnail cannot tell them apart). items: (name,
    uint8 image) pairs; others: (name, _orientations of its image) pairs, made once for all of them; their
    thumbnails are compared as one array (1000 x 50 in ~0.1 s)."""
    names, aspects, shapes = [], [], []
    for name, turns in others:
        if turns is not None:  # (a flat image has none) the first orientation: the image as it is
            names.append(name)
            aspects.append(turns[0][0])
            shapes.append(turns[0][1].ravel())
    found = []
    if not names:
        return found
    aspects, shapes = np.asarray(aspects), np.stack(shapes)
    for name, a in items:
        hit = np.zeros(len(names), bool)
        for aspect, m in _orientations(a) or ():
            near = np.flatnonzero(np.abs(aspect / aspects - 1) <= ASPECT_TOLERANCE)
            hit[near[np.abs(shapes[near] - m.ravel()).mean(1) <= COPY_DISTANCE]] = True
        if hit.any():
            found.append((name, names[int(np.argmax(hit))]))
    return found


def held_out_lines(items, turns: Optional[list] = None) -> list[str]:
    """Why each training image of ``items`` may not be trained on, one line an image ([] if none): a copy of a
    held-out image, whatever its name (scikit-image's yoda.data.HELD_OUT and the photographs of
    yoda.photos.HELD_OUT_PHOTOS, renamed, resized, re-encoded, grey, mirrored or brightened), or a file named like a
    held-out photograph. TRAINING.md says the model never saw them. items: (name or path, uint8 (H, W, 3)) pairs,
    as yoda.data.load_source gives them (its ``vet``: these lines join the unreadable and too small images').
    turns: a list that gets each image's (name, thumbnails), for warn_of_shared (they take a while to make)."""
    from .photos import HELD_OUT_PHOTOS

    lines = []
    for n, a in items:
        stem = os.path.splitext(os.path.basename(str(n)))[0]
        mine = _orientations(a)
        if turns is not None:
            turns.append((n, mine))
        if held := _held_out_name(mine):
            where = "yoda.photos.HELD_OUT_PHOTOS" if held in HELD_OUT_PHOTOS else "yoda.data.HELD_OUT"
            copy = "" if stem == held else f" a copy of {held}, which is"  # (not "astronaut.png is a copy of astronaut")
            lines.append(f"{n} is{copy} held out for evaluation ({where})")
        elif stem in HELD_OUT_PHOTOS:
            lines.append(f"{n} is named like {stem}, a photograph held out for evaluation "
                         f"(yoda.photos.HELD_OUT_PHOTOS)")
    return lines


def warn_of_shared(turns, val) -> None:
    """A UserWarning where one of the run's own validation images ``val`` looks like a copy of a training image
    (its validation PSNR would score what the model trains on; a warning, as a thumbnail also matches pictures of
    one layout). turns: the training images' (name, thumbnails), as held_out_lines collects them; val: (name or
    path, uint8 (H, W, 3)) pairs."""
    if val and (shared := shared_images(val, turns)):
        warnings.warn(f"validation images (data.val_source) look like copies of training images (data.source): "
                      f"{', '.join(f'{v} like {t}' for v, t in shared)} (by a 16x16 thumbnail, as held-out images "
                      f"are told; pictures of one layout look alike too); a copy's validation PSNR scores an image "
                      f"the model trains on: move it out of one of the folders", UserWarning, stacklevel=3)


def make_signatures(images: dict) -> dict:
    """{name: (aspect rounded to 5 digits, base64 of the rounded uint8 thumbnail)}: how SIGNATURES was made."""
    out = {}
    for name, a in images.items():
        aspect, thumb = signature(a)
        out[name] = (round(aspect, 5), base64.b64encode(np.round(thumb).astype(np.uint8).tobytes()).decode())
    return out


SIGNATURES: dict[str, tuple[float, str]] = {
    "astronaut": (1.0,
        "OIqusLnBqLG8w8TPjWqhhShTsbO7iHCRX7jHyJRorJcnMa2xomOdkTeUxcJzf7ClLV+utLaCuqlUqMHGjGm4sD44qry5m7+ktdHS"
        "1JpRuretM2rBQx6eerXV0dGqaLi3sXQ9j3ocCgMfyNfUt7qto2SbiZJRRy8QQYfSumxtmJYvfJKPfDMyWDVYmZheQVZNR3SMjYiB"
        "XlhbdYBbBAAAAKSKinaNhX91gXptUz8XAAC4nIhxdYl5kKVzIkhtn2wAhI5/W3iJXI+VNQAAAAR7MEJ+jVp2Yl5zghIOZQNKEUk2"
        "UoSJdZp5lGMEDysGXgowW0dvezGObFN9AwAAAAoCMg=="),
    "coffee": (1.5,
        "FBsdNWxrbZGCeXt+gY+YtRYZL2hsi8/K2LJ7fIWJlakVKWdwcMmirb/RoISBfo+mJmNxY4uvkoeavtOSgH6Pp2trYViMnVpeZZnS"
        "hH2DkapoXmlPcZiDl5eEtGt+ipSkZn9cTUu3pKKkpo9UhYmMgYiCVE1WVcW8wK1JUW11f4CLkFlaT0AwV0xCUVNjdGpxiYZiSzIi"
        "Jx84NUJTYGhhZ4eEVkEmOjYPIGYrVVpcX3GNjzc+JTUZDzOANVhNXmRuj5o2Sy8WFBAZXjpVQV1iZ5ymaChKIA0NEBxKMEhnZGih"
        "r6kaKi0eIzFMLR5XbWxppcbCgA4OLTgzEw0/b21xYQ=="),
    "rocket": (1.49883,
        "IhohJSYnJyYkIiAeHBkUFCUgJyosLSwrKSclIh8cGBYqJS0xMjIxMC4sKicjHxsYLykzNjc3NjQyMC4rJyMdGTIvODw7Ozo4NTMx"
        "LyomIBszNT1AQD89Qzo3NDYtKSIdNz5CRUZDQUxJOTY5LywkHztDSEtHRUVQUT05ODIuKCI9R01QSElKVlxAPDY1MCskQk9UVk9Q"
        "T15eRUA7ODMvJ0VRXF1VV1ZmYkpEPDo0MCpEU2RlW11bb2pORz47NDMtSlxral9iXnVvUElBOjMyJkJbbXBhYFp3dVFKQTguMDUo"
        "MTphcEY2aIRtV0EqISogIihxRFJFSHyNakx3Jh0tLQ=="),
    "chelsea": (1.50333,
        "jHloj3tqY3BXTWp9inw6MqNmc3ttaGVvZ1ZdfYRqUk+nan12cWRnb29gYXx8cWRiu32Adnt1am14bW6Ag2Vub7V2YmV/ZGV2jH6I"
        "goV9b3WnaVZ0eWUsboaOkX2NmV1tal6BenxYPFqGjHlBaohYX118l3pnbUhLkYhnSIutp4VdaIN2bHSCUIiIaGGAeYGMcHNnXGRo"
        "d1lzlmx5bGRfcHKEa36BeXlkWI5oaoB5fqpnj3pxjo53dk5/ZHiYrZSpWY6Oc4CUfIVJSWB9ep2KqlqBnpN8i3WIfkN8h4B7ia1i"
        "h6SdjoZ4bmVicX6PkZyoZIqjn5SKgHNse3qUrId8mw=="),
    "lomiri-Dragonfly": (1.33333,
        "fHZxbGl8ajpdblVGI2ZGN355dG51ZT49bmpmazE/JDSAemBdZmZVX2NscG1vdU4qhH2Ae293ZF5iSGp2eW9EMIeBhXNkd0RCXEJV"
        "RHFaKSWLhIxuWUZdQHFvUlBPeHNajY9rcVNZTm9xYjUyfm6Ic2Fyh3ZuWndRVUxHK25HQVWggFxkdmVxhXVrXlZlKUNXm0g2SGpP"
        "fW4xODRaHS2WYIxxKBM1bDFqUxolMQpMU3BXYkMdEkpKGVsjPkMYOGhnMzhgMQ4fXF8oKRo6Q2uYQW9/gjwNDxUuPxkYMyRMdl1i"
        "MCs8OS0SBRQsHjkZJj4bb6GIeFQmHA4PLHpGHS0OIg=="),
    "lomiri-Wine": (0.66719,
        "TVNkXWZcY15fa2SCamljX1NNXGJkYmRoXm1XdllucWg8N1mMj5KUhmGHjZyPmYtlPitZsLW5pnFvgr7IpbWbX0E1QIKKg2WQdIiF"
        "eUSKml07MUOCfFpYPUFVTEVtnj9ZOiQpZlM6OS43PSIuS3o2Vy0fK0ZDQD1EOFM7M1luP1lYVFZmY3KSnZZbTVhfVFxVenh2XT2I"
        "kJurt4dyfoCHh2MuLyotc3yIoJ2tpKqoo6J8SXF7Z0tkeX99fnmcsqythYeKh4KAg4N2cG5mh6moqHl+enZzcnFubmpiXXCJkJFp"
        "ZmReXF1dXV5bVEpJbXl9bEo0NjpARk5VWFlbcHt8ew=="),
    "lomiri-friends": (0.6658,
        "n52VUFhaysalw8PBwMC/v6yimVZdTsfJosTFxsTDwsKrpaBaY1fEy6LHxsTExMTEtaimW2ZpuMykzs3LysrJybKqql5fSUBwo8rJ"
        "yMjHxsa5q61gVikiQJDMy8rJyMbGuqGoYFszb6ObysvLy8vKybOXrWNiPW6Ihp2jn6CipKK1pLBlZkVkP05TgnN6foGHjn16dnBw"
        "fT5IW2tjYmNpaKGHgomNhYVsUW19fHdvcXWCh3x8gISAcmtucnJvcIF/n5aRlJOgop+IcHBvbW2TfH+Oj4+JiH98a1pbXl9hh3Sa"
        "gHaAhImNiHhhZmhlZ4Zyj4mLkIx/cXNgQ0lRTlN/Yw=="),
    "lomiri-seeding": (1.77778,
        "qNvUwPb9//////+/icXl23CSl3bZzuv7/v771ozQxZxSQFarr7qqvc3Ps4l1gXFTU090pZ+hop+/mXBRUFBDT0RBfpt6k6mSb3pj"
        "T1pCQ3w3NH2ESX+tYllfSkltP0dzNjBpg1aHs1JXXlhFSzVYfy8oQpFXi5g9SE16UjcwQlsnIylLUHJGNDQ5VTooMCwyIiIsI1Zc"
        "Kio5SDIsIyUiNyMmLiA/RyAmVk8oJR4nJioiICMdLCggJkU/ISBffB4oHSAhGykaHyIiHhoYXl8kKhwZGhUmGCMfHx8TEzc0GSMf"
        "HRYUJBkfGRsZDg8YGBUeIRkUFiMUHRMUEg8QFRobIQ=="),
    "mate-Dune": (1.6,
        "naKnrK+xtLS0s7Gvq6ejnp6kqa2ws7W2t7Wzsa2ppKCepKmusrS2tbO3s7KuqqWgnaOqrrG0sbeyt66yraqjn5ufp6ytsq6zsbOp"
        "rqWhm5eAiIqQkZeVk5WSko2HgH96dYB+hZGKkIyNjouHgn57d3+GhomUjZGPk5CHe3ZveWN+hIqAkouKlYxua09WXWNUcH2FdYF7"
        "gYp+dHFoYl9HVXeAjJKGlJeXiYR0b25gW1B9iISDjpuhlYyCdXtsbFtUe4yYeqClp5GajYp7hH1jXH6IgYmVlpegmpaOh4R6a0x1"
        "e3uFjoiXlZKZiIh/bVhfcnByfHmGi4yQjoyOh3SBjA=="),
    "mate-LadyBird": (1.6,
        "hnSGin9vXHB2bl9DQmSErl91bpF5bGN2dktBYTlot/ZIVn2MZm5wfW1XXXBbpqP/TYOLtHJvfYNwc2VGX2F870i0smRfeIZzaVVi"
        "PFBOXXg8qKpTRG6AcmBFXVxDWVVdQ3CJW0VzhIdlVX15dX9BQUFYV1RGfJluhHJsdZCRjmNIU0FKS3mdel11bn+Wcmk3Tk81QU9u"
        "sY1fUXiLrYpJNU9aRVFba9CzYm2lhKe1moNPWV5cZbfhpG2O1JWzqrq9Pk1vWXPj3U5sebOayfWVsCpBdmSX2aZFb2CRoKzaoGQv"
        "P2x9vdCHUnBnkJiJsqRbODdalryXeVx1bnaMc5afYA=="),
    "mate-Wood": (1.33333,
        "x9DV2Nvc3dzc2tnY1tTSz8HByNDV2Nzc3Nzc2tnY1dC7vsDEz9LY29zc3d3c29nXwcPDxsPM19je3t7f3tzb2cbHzMvHxcfX2tve"
        "393d3NrFy8nMz8/PxtHe3N3b29nWx8vJzc/Pzc/GxNve2drd2cPJycjQ0dDOzMrBzt3b1dTKy9DOztLQ0s/T08jA09zVyszQ09HP"
        "19HY0tXUzLu/18jNztPR0dTX1NHSz9HMwrbLz87R0djT1dDQ1NTS1NLIxdDO0c7U1NLO09bY0dHNzsPPz87Q0tnQ087RztTLxc7C"
        "zMzH0c7S1dHT0s3S0cjAvsbKx8/MztDS0NLSzMfMyQ=="),
    "plasma-ColdRipple": (1.6,
        "s7O0tbW2tra2tra2tbW0tLOztLW1tra2tra2tbW1tLSys7S1tba2tra2tra1tbSzsrOztLW2tra2tra2tbW0s7Gys7O0tba2tra1"
        "tbS0tLOwsbKys7O0tbW1tLOzs7OzrK6ur7Cxs7Kzs7KxsbGysqSlpaaoqq2oqqyqqKanp6eeoJpyVV1pa2xiWFV1oaGfl5iFHCdC"
        "UF5aUEIjMJmZl46PhDk6RFJaV1VLQEaPjo6DhGAzO0RLTktKRT05X4KDd1YzNTxCQ0RDQj46NzBJdUcuMjY7Oz08Pj46OTQwKzss"
        "LDM1Nzo7Ozs7OTYzMi4sKSowMDM1NjY0NTEwLy0sKQ=="),
    "plasma-FallenLeaf": (1.6,
        "KCovKCgtKig+PDVDKz1lfEdRTkJHRzs5Qz0/WjNPVG1CUkdTWFBOR05KUEcqNEtUKS87WW1fcGp1gW5NT0hKQ01KZWx6XWF4YnyH"
        "nKdjaEFtfndYX1BgT2x+pr+nSUpPWoyqgVRBcXizzMPNb1J+m2l0j25ktZi90s69yp2Qvoq8zc+jsZq2sb/CvrZ+TlRaip5vdaml"
        "d4e7qJqglEqij1hneWq3uICdqbWfnX1ZnmAwfq2QrtPTx4N3lptxdldCSZS1erzPtXN4fLC5pHw5O2J1fGKIvMqXb4a/s6FhQkRt"
        "dEtAUn64g0BfaWRnalVneVpBUERdejosOj9AnaeEkg=="),
    "plasma-Path": (1.6,
        "HhgnVG03Hyx5OmUoIBkYHR0bRU42JCUmZCpBIxgaHB4fJEU3LB4hJD0gNx8YGhwbGh0tLCccHSUzIi0aGhkcHRohHyEnIB0kMB4r"
        "GhsaGxwdJSEcIx8eIysfKB4eFxobHyMdHiMeHyQpIjomIxgcGyEiISc9JCgqRStMJyEZIBwpKx0pRD0wM0ImOSYpICIhKCcsMj8t"
        "LyUmKCsqMSohIx8iJjA+Mi4iJCotKCsZGyAiJSw7NSwjIiwoLSkkGxsbJSouOC0nJiApLislJygfHikoKDs7JyUpIx8jJiIbIiQi"
        "ISM3NSEiJyQdHiUrJiQkHB8iPD4oKB8hKh8jIBslJg=="),
}
