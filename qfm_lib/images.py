"""Decoding photos into 8-bit RGB, with clear errors for files that cannot be used.

Convertible modes are handled: grayscale (L, LA, I, I;16, F: scaled to 8 bit from 0..1 for floats that
stay within 1, give or take half an 8-bit level, else from 0..255 when every value does, else from 0..65535,
which 16-bit PNGs always are; an integer image whose values all fit in 12 bits, or a float image whose largest
value lies between just above 1 and 2, is scaled the same way and comes out dark, with a warning once per
file; values below 0 or above the scale's top, which clipping would change, raise `ImageError`),
palette (P), RGBA (alpha is composited on white, as a viewer would show it), CMYK. A photo's EXIF
orientation is applied, so it is scored upright, as people see it. Corrupt, truncated, missing, tiny or
absurdly large files raise `ImageError` naming the file.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MIN_SIDE = 32          # the backbone downsamples by 32: a smaller image has no last-stage pixel
MAX_PIXELS = 64_000_000  # larger images are refused rather than silently resized


class ImageError(ValueError):
    """An image file that cannot be used, with its path in the message."""


class ImageWarning(UserWarning):
    """An image that decoded, but may not look as its author meant; the message names the file."""


_WARNED: set[str] = set()  # files already warned about (load_rgb resets Python's own once-per-place record)


def _warn_once(name: str, message: str) -> None:
    """An `ImageWarning` about the file `name`, the first time only, shown at the caller of load_rgb."""
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"{name}: {message}", ImageWarning, stacklevel=4)


def _half_level(top: float) -> float:
    """Half an 8-bit level of a scale running from 0 to `top`: what rounding to 8 bits drops anyway."""
    return 0.5 * top / 255


class _BadPixels(ValueError):
    """Pixel values no 8-bit image can hold (the file decoded)."""


def _to_uint8_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        bad = int((~np.isfinite(arr)).sum())
        if bad:
            raise _BadPixels(f"{bad} of its {arr.size} pixels are NaN or infinite")
        low, peak = float(arr.min()), float(arr.max())  # two passes over what may be a 64-megapixel image
        top = 65535.0 if img.mode.startswith("I;16") or peak > 255 else 255.0
        if img.mode == "F" and peak <= 1.0 + _half_level(1.0):  # floats usually hold 0..1 (with rounding errors)
            top = 1.0
        half_level = _half_level(top)  # e.g. -1e-6 in a 0..1 image
        if low < -half_level or peak > top + half_level:  # signed or 32-bit data: clipped, another image
            raise _BadPixels(f"its values run from {low:g} to {peak:g}, outside the 0..{top:g} it would be scaled "
                             f"from (mode {img.mode}); rescale it to 0..65535, or to 0..1 in floating point")
        if top == 65535.0 and img.mode != "F" and 0 < peak < 4096:  # 10/12-bit sensor data, or a very dark image
            _warn_once(name, f"an integer image (mode {img.mode}) whose largest value is {peak:.0f}, within 12 bits; "
                       f"it is scaled from 0..65535 (at most {peak / 65535 * 255:.0f} of 255). If it holds 10- or "
                       "12-bit data, rescale it to the full 16 bits first")
        if img.mode == "F" and top == 255.0 and peak < 2:  # a 0..1 image that overshoots 1, or a black 0..255 one
            _warn_once(name, f"a floating-point image whose largest value is {peak:g}, above 1 by more than half "
                       "an 8-bit level; it is scaled from 0..255, so it comes out black. If it holds 0..1 data, "
                       "clip it to 0..1 first")
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def resize_shorter(img: Image.Image, side: int | None) -> Image.Image:
    """Bicubic resize so the shorter side is `side` pixels (None: unchanged)."""
    if side is None:
        return img
    scale = side / min(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample=3)


def load_rgb(path: str | Path, min_side: int = MIN_SIDE) -> Image.Image:
    """Open `path` fully decoded as 8-bit RGB; raise ImageError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS, below, is lower
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"{path}: {img.width}x{img.height} exceeds {MAX_PIXELS} pixels; "
                                     "downscale it first")
                img.load()
                rgb = _to_uint8_rgb(ImageOps.exif_transpose(img), str(path))
    except ImageError:
        raise
    except _BadPixels as err:
        raise ImageError(f"{path}: {err}") from err
    except Image.DecompressionBombError as err:  # raised on opening, before the size can be read
        raise ImageError(f"{path}: exceeds {MAX_PIXELS} pixels ({err}); downscale it first") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    if min(rgb.size) < min_side:
        raise ImageError(f"{path}: image is {rgb.width}x{rgb.height}, smaller than the minimum "
                         f"side {min_side}")
    return rgb
