"""Untrusted image bytes -> RGB uint8 array, with the size checked before any pixel is decoded."""
from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import Busy, InvalidInput, UnsupportedMediaType

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
            # Peak memory of one decode: PIL's 4 bytes per pixel plus the array's 3 (no extra RGB copy
            # when the image is RGB already), about 30 MB at the default 4 MP cap.
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            pixels = np.array(rgb, dtype=np.uint8)  # a writable copy, as torch wants
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise InvalidInput(f"corrupt image data: {error}", code="invalid_image") from None
    return DecodedImage(pixels=pixels, image_format=image_format)


class DecodeLimiter:
    """Decodes untrusted images off the event loop, at most `slots` at once: a caller waits up to
    `wait_s` for a slot and then gets Busy (503 with Retry-After), so a burst of large uploads
    costs at most `slots` decodes of memory at a time."""

    def __init__(self, max_pixels: int, slots: int, wait_s: float):
        self.max_pixels, self.slots, self.wait_s = max_pixels, slots, wait_s
        self._semaphore: asyncio.Semaphore | None = None  # made on the event loop that first uses it

    async def decode(self, data: bytes) -> DecodedImage:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        if self._semaphore.locked() and self.wait_s <= 0:
            raise self._busy()
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self.wait_s)
        except asyncio.TimeoutError:
            raise self._busy() from None
        try:
            return await asyncio.to_thread(decode_image, data, self.max_pixels)
        finally:
            self._semaphore.release()

    def _busy(self) -> Busy:
        return Busy(f"{self.slots} images are being decoded already (JEPA_MAX_CONCURRENT_DECODES); retry in a second",
                    code="decoder_busy")
