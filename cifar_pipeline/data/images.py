"""Decoding one image file into the 32x32 RGB uint8 array the models are trained on.

Used by `predict` (and by the extra training data folders), so that an image file becomes
exactly the kind of array the CIFAR-10 archive holds: (32, 32, 3) uint8, RGB, HWC.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

SIZE = 32
# 64 megapixels: larger than any phone photo, small enough that decoding one stays under ~200 MB.
MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

# Modes with 8 bits (or fewer) per channel; anything else (I;16, I, F, 48-bit PNG) is refused
# rather than silently truncated to 8 bits.
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})


def decode_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return the image at `path` as a (32, 32, 3) uint8 RGB array.

    Grayscale, palette and CMYK images are converted to RGB; an alpha channel is composited over
    white; EXIF orientation is applied; the first frame of an animation is used. An image that is
    not 32x32 is centre-cropped to a square and resized with Pillow's antialiasing (Lanczos)
    filter. Raises ImageError for a missing, empty, corrupt, truncated, non-image, 16-bit or
    too-large (more than `max_pixels` pixels) file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageError(path, "unreadable", e.strerror or type(e).__name__) from None
    if not path.is_file():
        raise ImageError(path, "not a file")
    if size == 0:
        raise ImageError(path, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check(path, im, max_pixels)
                im.load()
                return _to_array(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "corrupt" if _has_image_signature(path) else "not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, "too large", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageError(path, reason, str(e)) from None


def _check(path: Path, im: Image.Image, max_pixels: int) -> None:
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(path, "too large", f"{width}x{height} pixels, at most {max_pixels} allowed")
    if width == 0 or height == 0:
        raise ImageError(path, "corrupt", f"size {width}x{height}")
    if im.mode not in _EIGHT_BIT_MODES or _png_bit_depth(im) > 8:
        raise ImageError(path, "16-bit", f"mode {im.mode}; save it with 8 bits per channel")


def _png_bit_depth(im: Image.Image) -> int:
    # Pillow decodes 48/64-bit PNGs as plain "RGB"/"RGBA", dropping the low byte; the raw mode
    # of the decoder still says 16 bits.
    if im.format != "PNG" or not im.tile:
        return 8
    raw = str(im.tile[0].args[0] if isinstance(im.tile[0].args, tuple) else im.tile[0].args)
    return 16 if "16" in raw else 8


def _to_array(im: Image.Image) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    im = im.convert("RGB")
    if im.size != (SIZE, SIZE):
        im = ImageOps.fit(im, (SIZE, SIZE), method=Image.Resampling.LANCZOS)
    return np.array(im, dtype=np.uint8)


_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def _has_image_signature(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
