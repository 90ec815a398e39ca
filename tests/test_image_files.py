"""decode_image: real image files in, (32, 32, 3) uint8 RGB out, a clear ImageError for bad files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cifar_pipeline.data.images import decode_image
from cifar_pipeline.errors import ImageError, PipelineError


def _rgb(h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png_16bit_rgb(w: int, h: int) -> bytes:
    raw = b"".join(b"\x00" + b"\x12\x34" * 3 * w for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_png_round_trip_is_lossless(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, a)


def test_grayscale_palette_rgba_become_rgb(tmp_path):
    gray = np.full((32, 32), 77, dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert (decode_image(tmp_path / "g.png") == 77).all()

    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.gif")
    assert decode_image(tmp_path / "p.gif").shape == (32, 32, 3)

    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:16, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png")
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[31, 0]) == (255, 255, 255)  # transparent composited over white


def test_other_sizes_are_resized_with_antialiasing(tmp_path):
    # A fine checkerboard averages to grey when downscaled with antialiasing; point sampling would alias.
    board = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(board).save(tmp_path / "big.png")
    out = decode_image(tmp_path / "big.png")
    assert out.shape == (32, 32, 3)
    assert abs(float(out.mean()) - 127.5) < 10 and out.std() < 20

    Image.fromarray(_rgb(20, 60)).save(tmp_path / "wide.jpg", quality=95)
    assert decode_image(tmp_path / "wide.jpg").shape == (32, 32, 3)


@pytest.mark.parametrize("case,reason", [
    ("empty", "empty file"),
    ("text", "not an image"),
    ("garbage_png", "corrupt"),
    ("truncated", "truncated"),
    ("gray16", "16-bit"),
    ("rgb48", "16-bit"),
    ("huge", "too large"),
    ("missing", "unreadable"),
    ("folder", "not a file"),
])
def test_bad_files_raise_a_clear_image_error(tmp_path, case, reason):
    path = tmp_path / f"{case}.png"
    good = tmp_path / "good.png"
    Image.fromarray(_rgb(64, 64)).save(good)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("hello, not an image\n")
    elif case == "garbage_png":
        path.write_bytes(good.read_bytes()[:40] + b"\xff" * 400)
    elif case == "truncated":
        path = tmp_path / "t.jpg"
        Image.fromarray(_rgb(64, 64)).save(path, quality=90)
        path.write_bytes(path.read_bytes()[:-300])
    elif case == "gray16":
        Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(path)
    elif case == "rgb48":
        path.write_bytes(_png_16bit_rgb(8, 8))
    elif case == "huge":
        path = good
    elif case == "folder":
        path.mkdir()
    with pytest.raises(ImageError) as info:
        decode_image(path, max_pixels=1000) if case == "huge" else decode_image(path)
    assert isinstance(info.value, PipelineError)
    assert info.value.reason == reason
    assert str(path) in str(info.value)
