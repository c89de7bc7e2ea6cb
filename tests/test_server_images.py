"""Untrusted image decoding: formats, corrupt data, and decompression bombs refused from the header."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server.errors import InvalidInput, UnsupportedMediaType
from server.images import decode_image
from test_api import png_header_only


def encoded(fmt: str, size=(48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, ext", [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp")])
def test_accepted_formats_decode_to_rgb_uint8(fmt, ext):
    image = decode_image(encoded(fmt), max_pixels=10_000)
    assert image.pixels.shape == (32, 48, 3) and image.pixels.dtype == np.uint8 and image.image_format == ext
    assert image.pixels.flags.writeable


def test_greyscale_and_alpha_become_rgb():
    buffer = io.BytesIO()
    Image.new("LA", (20, 20), (128, 255)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), 10_000).pixels.shape == (20, 20, 3)


def test_bomb_is_refused_from_its_header():
    bomb = png_header_only(40_000, 40_000)
    assert len(bomb) < 200
    with pytest.raises(InvalidInput) as error:
        decode_image(bomb, max_pixels=4096 * 4096)
    assert error.value.code == "image_too_large"


def test_pixel_limit_is_the_configured_one():
    with pytest.raises(InvalidInput, match="pixels"):
        decode_image(encoded("PNG", (100, 100)), max_pixels=9_999)
    assert decode_image(encoded("PNG", (100, 100)), max_pixels=10_000).width == 100


@pytest.mark.parametrize("data, error", [
    (b"plain text", UnsupportedMediaType),
    (encoded("BMP"), UnsupportedMediaType),   # a real image, but not a format we accept
    (encoded("PNG")[:50], InvalidInput),
    (encoded("JPEG")[:200], InvalidInput),
    (b"", InvalidInput),
])
def test_non_images_and_corrupt_images(data, error):
    with pytest.raises(error):
        decode_image(data, max_pixels=10_000)
