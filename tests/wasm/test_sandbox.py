"""The WebAssembly sandbox: kernels give the same bytes everywhere, and hostile modules
stop the same way everywhere — without touching the host."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import wasmtime

from aeamc.shared import wasm
from aeamc.shared.tasks.wasm_kernel import MissingBlob, WasmKernel
from tests.support.kernels import Blobs, mandelbrot_input

MB = 1 << 20
FUEL = 10**10


def wat(body: str, *, memory: int = 1, input_at: int = 16, output_at: int = 0) -> bytes:
    """A kernel in the text format: ``body`` is aeamc_run's code."""
    return wasmtime.wat2wasm(
        f"""(module (memory (export "memory") {memory})
        (func (export "aeamc_input") (param i32) (result i32) i32.const {input_at})
        (func (export "aeamc_output") (result i32) i32.const {output_at})
        (func (export "aeamc_run") (param i32 i32 i32) (result i32) {body}))"""
    )


def fault(
    module: bytes, *, fuel: int = 10**6, memory_bytes: int = MB, data: bytes = b"x"
) -> wasm.KernelFault:
    with pytest.raises(wasm.KernelFault) as caught:
        wasm.run_chunk(wasm.check_module(module), data, 0, 1, fuel=fuel, memory_bytes=memory_bytes)
    return caught.value


# -- the examples -----------------------------------------------------------------------------


def test_example_kernels_pass_the_upload_checks(kernels: dict[str, bytes]) -> None:
    assert set(kernels) == {"mandelbrot", "matmul_int8"}
    for data in kernels.values():
        module = wasm.check_module(data)
        assert {e.name for e in module.exports} == set(wasm.EXPORTS)
        assert list(module.imports) == []


def test_matmul_kernel_computes_the_int8_product(kernels: dict[str, bytes]) -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (37, 53), dtype=np.int8)
    b = rng.integers(-128, 128, (53, 29), dtype=np.int8)
    data = struct.pack("<3I", 37, 53, 29) + a.tobytes() + b.tobytes()
    module = wasm.check_module(kernels["matmul_int8"])
    bands = [wasm.run_chunk(module, data, i, 5, fuel=FUEL, memory_bytes=32 * MB) for i in range(5)]
    expected = (a.astype(np.int32) @ b.astype(np.int32)).astype("<i4").tobytes()
    assert b"".join(r.output for r in bands) == expected
    assert all(r.fuel_used > 0 for r in bands)


def test_mandelbrot_bands_tile_the_image(kernels: dict[str, bytes]) -> None:
    module = wasm.check_module(kernels["mandelbrot"])
    data = mandelbrot_input()
    bands = [wasm.run_chunk(module, data, i, 7, fuel=FUEL, memory_bytes=8 * MB) for i in range(7)]
    image = b"".join(r.output for r in bands)
    assert len(image) == 96 * 64
    whole = wasm.run_chunk(module, data, 0, 1, fuel=FUEL, memory_bytes=8 * MB).output
    assert image == whole  # the bands are exactly the rows of the whole image
    assert 255 in image and min(image) < 50  # inside and far outside the set


_OTHER_PROCESS = """
import struct, sys, hashlib
from aeamc.shared import wasm
module = wasm.check_module(open(sys.argv[1], "rb").read())
data = open(sys.argv[2], "rb").read()
for i in range(int(sys.argv[3])):
    r = wasm.run_chunk(module, data, i, int(sys.argv[3]), fuel=10**10, memory_bytes=32 << 20)
    print(hashlib.sha256(r.output).hexdigest(), r.fuel_used)
"""


@pytest.mark.parametrize("name", ["mandelbrot", "matmul_int8"])
def test_another_process_gets_the_same_bytes_and_fuel(
    kernels: dict[str, bytes], name: str, tmp_path: object
) -> None:
    """Output and cost are functions of the bytes alone: a fresh interpreter (another
    compilation, another address-space layout) agrees on every chunk."""
    from pathlib import Path

    tmp = Path(str(tmp_path))
    if name == "mandelbrot":
        data = mandelbrot_input(128, 96, 300)
    else:
        data = struct.pack("<3I", 48, 64, 40) + os.urandom(48 * 64 + 64 * 40)
    (tmp / "k.wasm").write_bytes(kernels[name])
    (tmp / "in.bin").write_bytes(data)
    module = wasm.check_module(kernels[name])
    here = [
        f"{hashlib.sha256(r.output).hexdigest()} {r.fuel_used}"
        for r in (
            wasm.run_chunk(module, data, i, 6, fuel=FUEL, memory_bytes=32 * MB) for i in range(6)
        )
    ]
    there = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(tmp / "k.wasm"), str(tmp / "in.bin"), "6"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")[:-1]
    assert there == here


# -- hostile modules --------------------------------------------------------------------------


def test_an_endless_loop_runs_out_of_fuel_at_the_same_point_every_time() -> None:
    endless = wat("(loop $l br $l) i32.const 0")
    first, second = fault(endless), fault(endless)
    assert first.code == second.code == "out_of_fuel"
    assert str(first) == str(second)


def test_a_memory_bomb_stops_at_the_cap() -> None:
    """It grows memory page by page until refused, then writes past what it got: a fault
    naming the cap, and the instance never held more than it."""
    bomb = wat(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))"
        "(i32.store (i32.const 2000000000) (i32.const 1)) i32.const 0"
    )
    caught = fault(bomb, memory_bytes=4 * MB)
    assert caught.code == "memory_limit" and "4194304 bytes" in str(caught)
    # Growing by 1 MiB at a time it is refused earlier, holding 3 MiB and a page.
    coarse = wat(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))"
        "(i32.store (i32.const 2000000000) (i32.const 1)) i32.const 0"
    )
    caught = fault(coarse, memory_bytes=4 * MB)
    assert caught.code == "trap" and f"holding {49 * 65536} of {4 * MB} bytes" in str(caught)


def test_a_module_declaring_more_memory_than_allowed_does_not_start() -> None:
    assert fault(wat("i32.const 0", memory=100), memory_bytes=MB).code == "memory_limit"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("unreachable", "trap"),
        ("(i32.div_u (i32.const 1) (i32.const 0))", "trap"),
        ("i32.const -3", "refused"),
        ("i32.const 2000000", "bad_output"),  # past the end of memory
    ],
)
def test_kernel_faults_are_named(body: str, code: str) -> None:
    assert fault(wat(body)).code == code


def test_output_beyond_the_protocol_limit_is_refused() -> None:
    big = wat(f"i32.const {wasm.MAX_OUTPUT_BYTES + 1}", memory=20)
    assert fault(big, memory_bytes=32 * MB).code == "bad_output"


def test_input_the_kernel_has_no_room_for() -> None:
    assert fault(wat("i32.const 0", input_at=0), data=b"abc").code == "input_too_large"
    assert fault(wat("i32.const 0", input_at=65530), data=b"0123456789").code == "input_too_large"


def test_no_state_carries_from_one_chunk_to_the_next() -> None:
    """A counter in a global and in memory starts again in every chunk's instance."""
    counter = wasmtime.wat2wasm(
        """(module (memory (export "memory") 1) (global $n (mut i32) (i32.const 0))
        (func (export "aeamc_input") (param i32) (result i32) i32.const 16)
        (func (export "aeamc_output") (result i32) i32.const 0)
        (func (export "aeamc_run") (param i32 i32 i32) (result i32)
          (global.set $n (i32.add (global.get $n) (i32.const 1)))
          (i32.store8 (i32.const 0) (i32.add (i32.load8_u (i32.const 0)) (global.get $n)))
          i32.const 1))"""
    )
    module = wasm.check_module(counter)
    runs = {wasm.run_chunk(module, b"", i, 3, fuel=10**6, memory_bytes=MB).output for i in range(3)}
    assert runs == {b"\x01"}


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (b"\0asm\x01\0\0\0garbage", "not a valid module"),
        (b"not wasm at all", "not a valid module"),
        (
            wasmtime.wat2wasm(
                '(module (import "wasi_snapshot_preview1" "random_get"'
                ' (func (param i32 i32) (result i32))) (memory (export "memory") 1))'
            ),
            "may import nothing",
        ),
        (
            wasmtime.wat2wasm('(module (import "env" "memory" (memory 1)))'),
            "may import nothing",
        ),
        (
            wasmtime.wat2wasm(
                '(module (memory (export "memory") 1)'
                '(func (export "aeamc_input") (param i32) (result i32) i32.const 0)'
                '(func (export "aeamc_output") (result i32) i32.const 0)'
                '(func (export "aeamc_run") (param i32 i32 i32) (result i32) i32.const 0)'
                '(func (export "_start")))'
            ),
            "unexpected exports _start",
        ),
        (
            wasmtime.wat2wasm(
                '(module (memory (export "memory") 1)'
                '(func (export "aeamc_input") (param i32) (result i32) i32.const 0)'
                '(func (export "aeamc_output") (result i32) i32.const 0))'
            ),
            "does not export aeamc_run",
        ),
        (
            wasmtime.wat2wasm(
                '(module (memory (export "memory") 1)'
                '(func (export "aeamc_input") (param i64) (result i32) i32.const 0)'
                '(func (export "aeamc_output") (result i32) i32.const 0)'
                '(func (export "aeamc_run") (param i32 i32 i32) (result i32) i32.const 0))'
            ),
            "aeamc_input must be a function of type (i32) -> (i32)",
        ),
        (b"\0asm\x01\0\0\0" + b"\0" * (wasm.MAX_MODULE_BYTES), "at most"),
    ],
)
def test_modules_outside_the_sandbox_are_refused(module: bytes, reason: str) -> None:
    with pytest.raises(wasm.ModuleRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        wasm.check_module(module)


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        # threads: an atomic read-modify-write on (non-shared) memory
        ("(drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))", "threads"),
        # relaxed SIMD: results may differ between machines
        ("(drop (i32x4.relaxed_trunc_f32x4_s (v128.const i32x4 0 0 0 0)))", "relaxed SIMD"),
    ],
)
def test_non_deterministic_instructions_do_not_compile(instruction: str, reason: str) -> None:
    try:
        data = wasmtime.wat2wasm("(module (memory 1) (func " + instruction + "))")
    except wasmtime.WasmtimeError:  # the text parser may already refuse it
        return
    with pytest.raises(wasm.ModuleRefused, match=f"not a valid module.*{reason}"):
        wasm.check_module(data)


# -- the task kind ----------------------------------------------------------------------------


def test_the_kind_runs_a_task_named_by_digests(kernels: dict[str, bytes]) -> None:
    module, data = kernels["mandelbrot"], mandelbrot_input()
    blobs = Blobs({wasm.module_digest(module): module, wasm.module_digest(data): data})
    kind = WasmKernel(blobs)
    params = {
        "module": wasm.module_digest(module),
        "input": wasm.module_digest(data),
        "fuel": FUEL,
        "memory_mb": 8,
    }
    kind.validate_params(params, 4)
    direct = wasm.run_chunk(wasm.check_module(module), data, 2, 4, fuel=FUEL, memory_bytes=8 * MB)
    assert kind.run_chunk(params, 2, 4) == direct.output


def test_the_kind_refuses_bytes_that_are_not_the_named_ones(kernels: dict[str, bytes]) -> None:
    """A source that hands over other bytes under a digest (a tampered cache, a lying
    server) is caught before anything runs."""
    module, data = kernels["mandelbrot"], mandelbrot_input()
    other = kernels["matmul_int8"]
    named = {"module": wasm.module_digest(module), "input": wasm.module_digest(data)}
    params = {**named, "fuel": FUEL, "memory_mb": 8}
    with pytest.raises(MissingBlob, match=r"module bytes .* another digest") as module_caught:
        WasmKernel(Blobs({named["module"]: other, named["input"]: data})).run_chunk(params, 0, 1)
    with pytest.raises(MissingBlob, match=r"input bytes .* another digest") as input_caught:
        WasmKernel(Blobs({named["module"]: module, named["input"]: b"x"})).run_chunk(params, 0, 1)
    with pytest.raises(MissingBlob):
        WasmKernel(Blobs({named["module"]: module})).run_chunk(params, 0, 1)
    # Which content is damaged travels with the error, also from a worker process back to
    # the agent (pickled), so the agent can discard exactly that file.
    assert module_caught.value.digest == named["module"]
    assert pickle.loads(pickle.dumps(input_caught.value)).digest == named["input"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"module": "AB" * 32}, "params.module"),
        ({"input": "ab"}, "params.input"),
        ({"fuel": 0}, "params.fuel"),
        ({"memory_mb": 5000}, "params.memory_mb"),
        ({"extra": 1}, "params"),
    ],
)
def test_bad_params_are_refused_at_submission(change: dict[str, object], field: str) -> None:
    from aeamc.shared.errors import TaskParamsError

    params = {"module": "ab" * 32, "input": "cd" * 32, "fuel": 10, "memory_mb": 1, **change}
    with pytest.raises(TaskParamsError) as caught:
        WasmKernel(Blobs()).validate_params(params, 1)
    assert caught.value.field.startswith(field)


def test_the_guides_smallest_kernel_builds_and_runs_as_written(tmp_path: object) -> None:
    """docs/workloads.md's C example, built with the command the guide gives, passes the
    upload checks and computes what the guide says (output byte j = input[j] + index)."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    guide = (root / "docs" / "workloads.md").read_text()
    source = re.search(r"```c\n(.*?)```", guide, re.S)
    command = re.search(r"```sh\n(clang .*?)```", guide, re.S)
    assert source and command
    work = Path(str(tmp_path))
    (work / "kernel.c").write_text(source.group(1))
    argv = shlex.split(command.group(1).replace("\\\n", " "))
    argv = [str(root / a) if a.startswith("docs/") else a for a in argv]
    subprocess.run(argv, cwd=work, check=True, capture_output=True)
    module = wasm.check_module((work / "kernel.wasm").read_bytes())
    data = bytes(range(200))
    outs = [
        wasm.run_chunk(module, data, i, 4, fuel=10**6, memory_bytes=MB).output for i in range(4)
    ]
    assert b"".join(outs) == bytes(
        (b + i) % 256 for i in range(4) for b in data[i * 50 : i * 50 + 50]
    )
