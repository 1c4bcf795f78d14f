"""A strict PNG reader for 8-bit grey and palette images, written from the PNG
specification (not from the encoder it checks): every chunk's CRC, the IHDR fields, the
PLTE, the IDAT stream and all five row filters."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    color_type: int
    #: The PLTE's colours (palette images), else None.
    palette: list[tuple[int, int, int]] | None
    #: One byte per pixel, row by row: grey levels, or palette indices.
    pixels: bytes
    #: The chunk types, in file order.
    chunks: list[bytes]


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk; AssertionError on a bad signature, length or CRC."""
    assert data[:8] == SIGNATURE, "not a PNG signature"
    found, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert len(body) == length, f"{kind!r} truncated"
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        assert crc == zlib.crc32(kind + body), f"{kind!r}: bad CRC"
        found.append((kind, body))
        pos += 12 + length
    assert pos == len(data), "trailing bytes"
    return found


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> Png:
    """Decode an 8-bit, non-interlaced grey (type 0) or palette (type 3) PNG."""
    found = chunks(data)
    kinds = [k for k, _ in found]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and found[-1][1] == b""
    width, height, depth, color_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", found[0][1]
    )
    assert width > 0 and height > 0
    assert (depth, compression, filtering, interlace) == (8, 0, 0, 0)
    assert color_type in (0, 3)
    palette = None
    plte = [body for kind, body in found if kind == b"PLTE"]
    if color_type == 3:
        assert len(plte) == 1 and len(plte[0]) % 3 == 0 and 3 <= len(plte[0]) <= 768
        assert kinds.index(b"PLTE") < kinds.index(b"IDAT")
        colours = plte[0]
        palette = [(colours[i], colours[i + 1], colours[i + 2]) for i in range(0, len(colours), 3)]
    else:
        assert not plte
    raw = zlib.decompress(b"".join(body for kind, body in found if kind == b"IDAT"))
    assert len(raw) == height * (width + 1), "IDAT holds another image size"
    rows: list[bytearray] = []
    previous = bytearray(width)
    for r in range(height):
        start = r * (width + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + width])
        for x in range(width):
            left = line[x - 1] if x else 0
            up, corner = previous[x], previous[x - 1] if x else 0
            predictor = (0, left, up, (left + up) // 2, _paeth(left, up, corner))[kind]
            line[x] = (line[x] + predictor) & 0xFF
        rows.append(line)
        previous = line
    pixels = b"".join(rows)
    if palette is not None:
        assert max(pixels) < len(palette), "a pixel indexes past the palette"
    return Png(width, height, color_type, palette, pixels, kinds)
