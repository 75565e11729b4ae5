"""An image's embedded ICC profile: its pixels converted to sRGB, the space yoda's models and outputs are in.

Colour (RGB, RGBA, CMYK, a palette) and grey (L, LA: a scanner's or Photoshop's grey profile, Gray Gamma 1.8, Dot
Gain 20%) images alike, with Pillow's ImageCms (LittleCMS, perceptual intent): a grey image becomes an RGB one of
equal channels, which yoda writes as grey again. A profile LittleCMS cannot read, or one of another colour space
than the pixels, is ignored with a warning (the pixels are taken as sRGB). A 16-bit grey image with a profile is
read at 8 bits first (as yoda reads 16-bit samples: round(u * 255 / 65535)); a float one keeps its values.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms


def to_srgb(im: Image.Image, p: Path) -> Image.Image:
    """``im`` converted from its embedded ICC profile to sRGB (module docstring); unchanged without one."""
    icc = im.info.get("icc_profile")
    if icc and im.mode in ("P", "PA"):  # a palette of colours in the profile's space
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if icc and im.mode.startswith("I;16"):  # a 16-bit grey scan: to 8 bits as yoda reads 16-bit samples, then
        info = im.info  # the profile (LittleCMS here takes 8-bit grey; the output is 8-bit anyway)
        im = Image.fromarray(np.round(np.asarray(im).astype(np.float64) * (255 / 65535)).astype(np.uint8), "L")
        im.info = info
    if not icc or im.mode not in ("RGB", "RGBA", "CMYK", "L", "LA"):
        return im
    src = None
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        opaque = im.convert({"RGBA": "RGB", "LA": "L"}[im.mode]) if im.mode in ("RGBA", "LA") else im
        out = ImageCms.profileToProfile(opaque, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        why = ("cannot be read" if src is None else  # read, but of another colour space (an RGB one in a CMYK file)
               f"does not fit its {im.mode} pixels")
        warnings.warn(f"{p}: its ICC colour profile {why} ({e}); the pixels are taken as sRGB", stacklevel=3)
        return im
    if im.mode in ("RGBA", "LA"):
        out.putalpha(im.getchannel("A"))
    return out
