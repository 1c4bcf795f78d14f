"""The demo's picture: a client's WebAssembly kernel renders a Mandelbrot image across the
fleet, and the image is put together from verified results only.

The demo does what any client of a coordinator does (docs/workloads.md), through the same
HTTP API: it builds ``docs/workloads/mandelbrot.c`` with clang (a copy ships with the
coordinator, in ``devnet_kernel/``), uploads the module (``POST /v1/modules``) and one
input per horizontal band of the image (``POST /v1/inputs``), and submits one ``wasm`` task
per band (``POST /v1/tasks``), each split into chunks of rows: separate tasks, so the
scheduler hands the bands to different devices. A band counts only once its result is
*verified* — read with ``?verified=true``, the rule of ``aeamc task result --verified``,
so unchecked bytes are never taken — and the image is the kernel's output bytes
unchanged, band after band and chunk after chunk: the PNG's palette only colours them.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aeamc.shared.errors import ProtocolError
from aeamc.shared.proofs import split_output
from aeamc.shared.runtime.wasmbuild import KernelBuildError, ToolchainMissing, build_wasm
from aeamc.shared.taskclient import ClientError
from aeamc.shared.wasmabi import DEFAULT_FUEL

from .devnet import Devnet
from .devnet_procs import DevnetError

#: The image: pixels, the kernel's iteration limit, and the part of the complex plane
#: shown (x_min, y_min, x_max, y_max; square pixels: 3.0 / 240 = 2.5 / 200).
WIDTH, HEIGHT, MAX_ITER = 240, 200, 200
VIEW = (-2.25, -1.25, 0.75, 1.25)
#: One task per band of rows; each task is split into chunks (tiles of rows).
BANDS, CHUNKS = 5, 4
#: What one chunk may use. A chunk of 10 rows needs at most ~10 million instructions and
#: the kernel's 1 MiB output buffer; every demo device allows this much.
FUEL, MEMORY_MB = DEFAULT_FUEL, 8
#: The preview's width in characters; a character is about twice as tall as it is wide.
PREVIEW_COLUMNS = 60
#: From no ink to full ink.
RAMP = " .:-=+*#%@"


def build_kernel(out: Path) -> bytes:
    """The Mandelbrot kernel's module, built into ``out/mandelbrot.wasm`` from the copy of
    docs/workloads/mandelbrot.c shipped with the coordinator, exactly as docs/workloads.md
    builds a kernel. Raises :class:`DevnetError` saying what to install when clang or lld
    is missing, or with the compiler's message."""
    shipped = resources.files("aeamc.coordinator").joinpath("devnet_kernel")
    with resources.as_file(shipped) as source:
        try:
            built = build_wasm(
                source / "mandelbrot.c",
                out / "mandelbrot.wasm",
                depends=[source / "aeamc_kernel.h"],
            )
        except ToolchainMissing as exc:
            raise DevnetError(
                f"the demo renders its picture with a kernel written in C: {exc} "
                "(`make demo` installs them)"
            ) from None
        except KernelBuildError as exc:
            raise DevnetError(f"building the demo's kernel: {exc}") from None
    return built.read_bytes()


def band_rows(band: int) -> tuple[int, int]:
    """The image rows ``[first, last)`` that band ``band`` covers."""
    return band * HEIGHT // BANDS, (band + 1) * HEIGHT // BANDS


def band_input(band: int) -> bytes:
    """The kernel's 48-byte input (its layout is in mandelbrot.c) for band ``band``: the
    band as an image of its own, full width, over its slice of :data:`VIEW`."""
    x_min, y_min, x_max, y_max = VIEW
    first, last = band_rows(band)
    step = (y_max - y_min) / HEIGHT
    return struct.pack(
        "<4I4d",
        WIDTH,
        last - first,
        MAX_ITER,
        0,
        x_min,
        y_min + first * step,
        x_max,
        y_min + last * step,
    )


@dataclass
class Band:
    """One band's task and, when the last look found it verified, its result."""

    index: int
    task_id: str
    input: bytes
    #: The band's pixels (one byte each, row by row), or None while it is not verified.
    pixels: bytes | None = None
    #: How it was verified (``spot-check``, ``replicas``, …).
    by: str | None = None
    #: The devices whose proofs deliver the verified result.
    provers: list[str] = field(default_factory=list)
    #: Devices whose result for this band was withdrawn (a failed check, a quarantine).
    withdrawn: list[str] = field(default_factory=list)


@dataclass
class Picture:
    """The picture's kernel (by digest) and bands, as submitted."""

    module_digest: str
    bands: list[Band]

    @property
    def verified(self) -> int:
        """How many bands the last :func:`poll` found verified."""
        return sum(b.pixels is not None for b in self.bands)

    @property
    def complete(self) -> bool:
        return self.verified == len(self.bands)

    def pixels(self) -> bytes:
        """The whole image, one byte per pixel, row by row; only when :attr:`complete`."""
        if not self.complete:
            raise DevnetError(f"only {self.verified} of {len(self.bands)} bands are verified")
        return b"".join(b.pixels or b"" for b in self.bands)

    def tasks(self) -> list[dict[str, Any]]:
        """The bands' tasks, as the demo lists what it submitted."""
        return [{"task_id": b.task_id, "kind": "wasm"} for b in self.bands]


def submit(net: Devnet, module: bytes) -> Picture:
    """Upload the module and the bands' inputs, then submit one ``wasm`` task per band.

    The tasks go in back to back, after every upload: queued together, they are handed
    out together, and a device takes at most a couple at a time
    (``max_inflight_per_device``), so the bands spread over the devices that take work.
    """
    client = net.client_api()  # what `aeamc task submit` uploads with
    try:
        module_digest, _ = client.upload("module", module)
        inputs = [band_input(index) for index in range(BANDS)]
        digests = [client.upload("input", data)[0] for data in inputs]
    except ClientError as exc:
        raise DevnetError(f"uploading the picture's kernel and inputs: {exc}") from None
    bands = []
    for index, (data, digest) in enumerate(zip(inputs, digests, strict=True)):
        params = {"module": module_digest, "input": digest, "fuel": FUEL, "memory_mb": MEMORY_MB}
        body = {"kind": "wasm", "params": params, "chunks": CHUNKS}
        task_id = net.call("POST", "/v1/tasks", body, "client")["task_id"]
        bands.append(Band(index, task_id, data))
    return Picture(module_digest, bands)


def poll(net: Devnet, picture: Picture) -> bool:
    """Look at every band again; whether all of them are verified now.

    Every band is read again each time: a result verified by a spot-check rests on
    sampling, and is withdrawn (and rendered again elsewhere) if its device is caught
    cheating later, so only the latest look counts.
    """
    for band in picture.bands:
        view = net.call("GET", f"/v1/tasks/{band.task_id}?verified=true", role="client")
        band.pixels, band.by, band.provers = None, None, []
        band.withdrawn = [p["device_id"] for p in view["proofs"] if p["credit"] == "void"]
        verification = view.get("verification") or {}
        if verification.get("state") != "verified" or view.get("output") is None:
            continue
        try:
            pieces = split_output(bytes.fromhex(view["output"]), view["chunks"])
        except ProtocolError as exc:
            raise DevnetError(f"band {band.index + 1}: {exc}") from None
        first, last = band_rows(band.index)
        pixels = b"".join(pieces)
        if len(pixels) != (last - first) * WIDTH:
            raise DevnetError(
                f"band {band.index + 1}: {len(pixels)} pixels, not {last - first}×{WIDTH}"
            )
        band.pixels, band.by = pixels, verification.get("by")
        band.provers = [
            p["device_id"]
            for p in view["proofs"]
            if p["output_digest"] == view["output_digest"] and p["credit"] != "void"
        ]
    return picture.complete


# -- the image ----------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    # Length, type, data, and the CRC-32 of type and data (PNG §5.3).
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(
    width: int,
    height: int,
    pixels: bytes,
    palette: Sequence[tuple[int, int, int]] | None = None,
) -> bytes:
    """A PNG file of an 8-bit image: ``pixels`` holds one byte per pixel, row by row.

    Without ``palette`` the bytes are grey levels (colour type 0); with one (1 to 256 RGB
    colours) they are indices into it (colour type 3, a PLTE chunk). Either way a decoder
    gets back exactly ``pixels``: every row is stored unfiltered (filter type 0) and
    deflated by zlib, the only compression PNG defines. Raises ValueError when the sizes
    disagree or a pixel indexes past the palette, rather than write a file no viewer
    opens.
    """
    if not (0 < width < 2**31 and 0 < height < 2**31) or len(pixels) != width * height:
        raise ValueError(f"{len(pixels)} bytes are not a {width}×{height} image")
    if palette is not None:
        if not 0 < len(palette) <= 256:
            raise ValueError(f"a palette has 1 to 256 colours, not {len(palette)}")
        if max(pixels) >= len(palette):
            raise ValueError(f"pixel value {max(pixels)} is past the {len(palette)} colours")
    # IHDR: width, height, bit depth 8, colour type, compression 0, filter 0, interlace 0.
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if palette is None else 3, 0, 0, 0)
    rows = b"".join(b"\x00" + pixels[r * width : (r + 1) * width] for r in range(height))
    chunks = [_png_chunk(b"IHDR", header)]
    if palette is not None:
        chunks.append(_png_chunk(b"PLTE", bytes(c for colour in palette for c in colour)))
    chunks += [_png_chunk(b"IDAT", zlib.compress(rows, 9)), _png_chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(chunks)


#: The escape values' colours along sqrt(v / 254): (position, RGB), from 0 to 1.
GRADIENT = (
    (0.0, (0, 7, 100)),
    (0.4, (32, 107, 203)),
    (0.75, (237, 255, 255)),
    (1.0, (255, 170, 0)),
)


def palette() -> list[tuple[int, int, int]]:
    """The 256 colours of the kernel's bytes: 255 (inside the set) black; an escape value
    ``v`` runs from deep blue through white to gold (:data:`GRADIENT`) along
    ``sqrt(v / 254)``, which spreads the many quickly escaping points away from the dark
    end."""
    colours = []
    for v in range(255):
        t = math.sqrt(v / 254)
        (t0, c0), (t1, c1) = next((a, b) for a, b in itertools.pairwise(GRADIENT) if t <= b[0])
        f = (t - t0) / (t1 - t0)
        r, g, b = (round(x + (y - x) * f) for x, y in zip(c0, c1, strict=True))
        colours.append((r, g, b))
    return [*colours, (0, 0, 0)]


def write_png(picture: Picture, path: Path) -> Path:
    """Write the complete picture to ``path`` as a palette PNG; returns the absolute path."""
    path.write_bytes(encode_png(WIDTH, HEIGHT, picture.pixels(), palette()))
    return path.resolve()


def preview(pixels: bytes, width: int, height: int, columns: int) -> list[str]:
    """The image as text, ``columns`` characters wide and half as many rows per pixel
    (a character is about twice as tall as it is wide): each character is the mean ink
    of the pixels it covers, on :data:`RAMP`. Ink is full inside the set (255) and grows
    with the square root of the escape value, so the rim of the set stands out."""
    rows = max(1, round(height * columns / width / 2))
    ink = [1.0 if v == 255 else 0.9 * math.sqrt(v / 254) for v in pixels]
    lines = []
    for r in range(rows):
        line = []
        for c in range(columns):
            cell = [
                ink[y * width + x] for y in _span(r, rows, height) for x in _span(c, columns, width)
            ]
            line.append(RAMP[min(len(RAMP) - 1, int(sum(cell) / len(cell) * len(RAMP)))])
        lines.append("".join(line))
    return lines


def _span(i: int, parts: int, size: int) -> range:
    # Part i of `parts` of 0 … size - 1; never empty, even when parts > size.
    first = i * size // parts
    return range(first, max(first + 1, (i + 1) * size // parts))


def report(picture: Picture, labels: dict[str, str], written: Path | None) -> list[str]:
    """The summary's lines about the picture: where it is, a preview, and which device
    rendered which band (and whose result for it was withdrawn)."""

    def name(device_id: str) -> str:
        return labels.get(device_id, device_id[:8])

    lines = [
        f"mandelbrot: {WIDTH}×{HEIGHT} pixels by a WebAssembly kernel, {BANDS} wasm tasks "
        f"(a band of rows each, {CHUNKS} chunks), {picture.verified}/{BANDS} bands verified"
    ]
    if written is not None:
        lines.append(f"picture   {written}")
    if not picture.complete:
        lines.append("picture   not written: not every band is verified")
        return lines
    text = preview(picture.pixels(), WIDTH, HEIGHT, PREVIEW_COLUMNS)
    starts = {band_rows(b.index)[0] * len(text) // HEIGHT: b for b in picture.bands}
    for r, row in enumerate(text):
        note = ""
        if (band := starts.get(r)) is not None:
            first, last = band_rows(band.index)
            note = f"  band {band.index + 1}, rows {first}–{last - 1}: " + ", ".join(
                map(name, band.provers)
            )
            note += f" (verified by {band.by})"
            if band.withdrawn:
                note += f"; {', '.join(map(name, band.withdrawn))}'s result withdrawn"
        lines.append(f"  |{row}|{note}")
    return lines
