"""Image files checked from their header before they are decoded: readable, and of a size an ultrasound frame can have.

A PNG header can claim any size (a "decompression bomb": a few bytes that decode to gigabytes). PIL refuses only
above 179 million pixels and merely warns from 89 million; an ultrasound frame has about one million (BUS-UCLM
856x606, BrEaST 1000x800, ThyroidXL up to 1500x1200). Anything above :data:`MAX_IMAGE_PIXELS` is refused with one
line naming the file, before a single pixel is decoded.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError

MAX_IMAGE_PIXELS = 40_000_000  # about 6300 x 6300: 40x the largest ultrasound frame we know of
# channels of each PIL mode as nnU-Net reads the file (imageio turns a palette into RGB)
CHANNELS = {"1": 1, "L": 1, "P": 3, "I": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "F": 1, "LA": 2, "La": 2, "PA": 2,
            "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "CMYK": 4}


@contextlib.contextmanager
def open_image(path, what: str = "image"):
    """``PIL.Image.open(path)`` with its header checked (nothing decoded yet). One-line :class:`NnunetMtlError`
    naming the file when it is missing, not an image, or larger than :data:`MAX_IMAGE_PIXELS`; errors while the
    caller decodes it become the same kind of line."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise NnunetMtlError(f"{what} {path} does not exist")
    except Image.DecompressionBombError:
        raise NnunetMtlError(f"{what} {path} claims a size far beyond any ultrasound frame (a decompression bomb?); "
                             f"expected at most {MAX_IMAGE_PIXELS:,} pixels")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise NnunetMtlError(f"{what} {path} is not a readable image ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:100]})")
    with im:
        if im.width * im.height > MAX_IMAGE_PIXELS:
            raise NnunetMtlError(f"{what} {path} claims {im.width}x{im.height} pixels, far beyond any ultrasound "
                                 f"frame (a decompression bomb?); expected at most {MAX_IMAGE_PIXELS:,} pixels")
        try:
            yield im
        except (OSError, ValueError, SyntaxError) as e:  # truncated data, found while decoding
            raise NnunetMtlError(f"{what} {path} is not a readable image ({type(e).__name__}: "
                                 f"{(str(e).splitlines() or [''])[0][:100]})")


def image_header(path, what: str = "image") -> tuple[int, int, str]:
    """(width, height, PIL mode) of an image file, from its header only (:func:`open_image`'s checks)."""
    with open_image(path, what) as im:
        return im.width, im.height, im.mode
