"""The demo's picture without a network: its PNG encoder (read back by an independent
decoder), its palette and preview, the bands' inputs, and the kernel it builds — the
documented one, byte for byte (the end-to-end check is tests/e2e/test_devnet.py)."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest

from aeamc.coordinator import devnet_picture as dp
from aeamc.coordinator.devnet_procs import DevnetError
from aeamc.shared import wasm
from tests.support.kernels import kernels
from tests.support.png import SIGNATURE, chunks, decode_png

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "coordinator" / "src" / "aeamc" / "coordinator" / "devnet_kernel"


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 3), (3, 7), (64, 40)])
def test_a_grey_png_gives_back_its_bytes(width: int, height: int) -> None:
    pixels = random.Random(width * 100 + height).randbytes(width * height)
    png = decode_png(dp.encode_png(width, height, pixels))
    assert (png.width, png.height, png.color_type, png.palette) == (width, height, 0, None)
    assert png.pixels == pixels
    assert png.chunks == [b"IHDR", b"IDAT", b"IEND"]


def test_a_palette_png_gives_back_its_indices_and_colours() -> None:
    colours = [(i, 255 - i, (7 * i) % 256) for i in range(200)]
    pixels = bytes(random.Random(1).randrange(200) for _ in range(33 * 17))
    png = decode_png(dp.encode_png(33, 17, pixels, colours))
    assert (png.width, png.height, png.color_type) == (33, 17, 3)
    assert png.palette == colours and png.pixels == pixels
    assert png.chunks == [b"IHDR", b"PLTE", b"IDAT", b"IEND"]


def test_the_png_header_is_laid_out_as_the_specification_says() -> None:
    data = dp.encode_png(300, 2, bytes(600), [(0, 0, 0)])
    assert data[:8] == SIGNATURE
    length, kind = struct.unpack_from(">I4s", data, 8)
    assert (length, kind) == (13, b"IHDR")
    # width, height, bit depth 8, colour type 3, compression, filter, interlace 0
    assert data[16:29] == struct.pack(">IIBBBBB", 300, 2, 8, 3, 0, 0, 0)
    assert data[29:33] == struct.pack(">I", zlib.crc32(data[12:29]))
    assert data[-12:] == struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def test_the_reader_catches_a_damaged_file() -> None:
    """The reader this file trusts does check the CRCs."""
    data = bytearray(dp.encode_png(8, 8, bytes(range(64))))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0x01
    with pytest.raises(AssertionError, match="bad CRC"):
        chunks(bytes(data))


@pytest.mark.parametrize(
    ("width", "height", "pixels", "palette"),
    [
        (4, 4, bytes(15), None),  # a byte short
        (0, 4, b"", None),
        (2, 2, bytes([0, 1, 2, 3]), [(0, 0, 0)] * 3),  # 3 indexes past the palette
        (1, 1, b"\x00", []),
        (1, 1, b"\x00", [(0, 0, 0)] * 257),
        (1, 1, b"\x00", [(0, 0, 256)]),
    ],
)
def test_an_image_no_viewer_could_open_is_refused(
    width: int, height: int, pixels: bytes, palette: list[tuple[int, int, int]] | None
) -> None:
    with pytest.raises(ValueError):
        dp.encode_png(width, height, pixels, palette)


def test_the_palette_colours_every_byte_the_kernel_gives() -> None:
    colours = dp.palette()
    assert len(colours) == 256 and all(0 <= c <= 255 for rgb in colours for c in rgb)
    assert colours[255] == (0, 0, 0)  # inside the set
    assert colours[0] == dp.GRADIENT[0][1] and colours[254] == dp.GRADIENT[-1][1]
    assert len(set(colours[:255])) > 200  # a gradient, not a few bands of colour


def test_the_bands_tile_the_view_without_gap_or_overlap() -> None:
    x_min, y_min, x_max, y_max = dp.VIEW
    seen_rows, top = 0, y_min
    for band in range(dp.BANDS):
        first, last = dp.band_rows(band)
        assert first == seen_rows and last > first
        seen_rows = last
        width, height, max_iter, reserved, bx_min, by_min, bx_max, by_max = struct.unpack(
            "<4I4d", dp.band_input(band)
        )
        assert (width, height, max_iter, reserved) == (dp.WIDTH, last - first, dp.MAX_ITER, 0)
        assert (bx_min, bx_max) == (x_min, x_max)
        assert by_min == pytest.approx(top) and by_max > by_min
        top = by_max
    assert seen_rows == dp.HEIGHT and top == pytest.approx(y_max)
    # The kernel's own checks: a chunk's output fits the protocol's limit.
    assert dp.WIDTH * dp.HEIGHT // (dp.BANDS * dp.CHUNKS) <= 1 << 20


def test_the_preview_shows_the_picture_in_characters() -> None:
    width, height = 40, 20
    # Left half inside the set, right half escaping at once.
    pixels = bytes(255 if x < width // 2 else 0 for _ in range(height) for x in range(width))
    lines = dp.preview(pixels, width, height, 20)
    assert lines == ["@" * 10 + " " * 10] * 5
    # Wider than the image: every character still covers a pixel.
    assert len(dp.preview(b"\x00\xff", 2, 1, 8)) == 2


def test_the_demo_ships_the_documented_kernel() -> None:
    for name in ("mandelbrot.c", "aeamc_kernel.h"):
        assert (SHIPPED / name).read_bytes() == (ROOT / "docs" / "workloads" / name).read_bytes()


def test_the_demo_builds_the_kernel_a_client_builds(tmp_path: Path) -> None:
    """The same bytes as tools/build_kernels.py gives from docs/workloads/, and a module
    the sandbox takes; built again, it is not recompiled."""
    module = dp.build_kernel(tmp_path)
    assert module == kernels()["mandelbrot"]
    wasm.check_module(module)
    built = tmp_path / "mandelbrot.wasm"
    before = built.stat().st_mtime_ns
    assert dp.build_kernel(tmp_path) == module and built.stat().st_mtime_ns == before


def test_without_clang_the_demo_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DevnetError, match=r"sudo apt install clang lld"):
        dp.build_kernel(tmp_path / "out")
    assert not (tmp_path / "out" / "mandelbrot.wasm").exists()
