"""Untrusted image bytes -> RGB uint8 array, with the size checked before any pixel is decoded."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInput, UnsupportedMediaType

# Formats a camera or an operator actually sends; everything else (TIFF, ICO, PSD, ...) is refused
# so that rarely exercised decoders never see untrusted bytes.
ACCEPTED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
MIN_SIDE = 16
MAX_SIDE = 16384


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8
    image_format: str  # file extension, e.g. "png"

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Raise UnsupportedMediaType for non-images, InvalidInput for corrupt, tiny or oversized ones."""
    if not data:
        raise InvalidInput("the image is empty", code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))  # reads the header only
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"not an accepted image; send one of: {', '.join(sorted(ACCEPTED_FORMATS.values()))}"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput("image dimensions are too large", code="image_too_large") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidInput(f"corrupt image header: {error}", code="invalid_image") from None
    with image:
        width, height = image.size
        # The decompression-bomb check: a few hundred bytes of PNG can declare gigapixels.
        if width * height > max_pixels or max(width, height) > MAX_SIDE:
            raise InvalidInput(
                f"image is {width}x{height} pixels; at most {max_pixels} pixels and {MAX_SIDE} per side",
                code="image_too_large",
            )
        if min(width, height) < MIN_SIDE:
            raise InvalidInput(f"image is {width}x{height} pixels; at least {MIN_SIDE} per side", code="invalid_image")
        image_format = ACCEPTED_FORMATS[image.format]
        try:
            pixels = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch wants
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise InvalidInput(f"corrupt image data: {error}", code="invalid_image") from None
    return DecodedImage(pixels=pixels, image_format=image_format)
