"""The ``classify-int8`` task kind: int8 neural-network inference on 8x8 digit images.

Spot-checks compare a device's output with the coordinator's re-execution byte for byte,
so inference must not depend on the platform. Floating point would (FMA, SIMD width, BLAS
summation order), which is why the model is quantized and evaluated with integers only:
int8 weights, int32 biases, int64 accumulators, fixed-point requantization, and an argmax
whose ties go to the lowest label. With integers every order of summation gives the same
result, so the numpy path (fast) and the pure-Python path (for devices without numpy) are
interchangeable.

The model is produced at development time by ``tools/train_classify_int8.py`` and ships
as ``classify_int8_model.json`` next to this module; see ``docs/classify-int8.md``.

numpy is imported only when a chunk is actually run, so the coordinator can import and
validate this kind without paying for (or even having) numpy.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from aeamc.shared.errors import TaskParamsError

NAME = "classify-int8"
MODEL_RESOURCE = "classify_int8_model.json"
MODEL_FORMAT = "aeamc-classify-int8/1"
_PACKAGE = __name__.rpartition(".")[0]

FEATURES = 64
CLASSES = 10
PIXEL_MAX = 16
MAX_SAMPLES = 4096
MAX_BATCH_SIZE = 256
_SAMPLE_HEX = 2 * FEATURES

_PARAM_KEYS = frozenset({"samples", "batch_size"})
_LOWER_HEX = re.compile(r"[0-9a-f]*")
_VALID_PIXELS = bytes(range(PIXEL_MAX + 1))
_INT64_MAX = 2**63 - 1
# The model is checked to stay inside int64 for *any* byte input, not only 0..16, so the
# numpy path can never wrap around even if handed unvalidated data.
_INPUT_BOUND = 255


@dataclass(frozen=True)
class Layer:
    """One fully connected layer with per-output-channel requantization."""

    weights: tuple[tuple[int, ...], ...]  # [output][input], int8
    bias: tuple[int, ...]  # int32, at the accumulator's scale
    multiplier: tuple[int, ...]  # 31-bit fixed-point multipliers
    shift: tuple[int, ...]  # total right shift applied after the multiply
    out_min: int
    out_max: int


@dataclass(frozen=True)
class Model:
    """The shipped quantized classifier, validated at load time."""

    layers: tuple[Layer, ...]
    digest: str  # SHA-256 of the model file, to tell model versions apart


def _model_error(message: str) -> ValueError:
    return ValueError(f"{MODEL_RESOURCE}: {message}")


def _int_list(value: Any, length: int, lo: int, hi: int, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != length:
        raise _model_error(f"{what} must be a list of {length} integers")
    for v in value:
        if type(v) is not int or not lo <= v <= hi:
            raise _model_error(f"{what} holds {v!r}, outside {lo}..{hi}")
    return tuple(value)


def parse_model(raw: bytes) -> Model:
    """Parse and check a model file.

    Beyond shapes and ranges, this proves that no accumulator or requantization product
    can leave int64 for any uint8 input: that bound is what makes the numpy path (which
    wraps silently) agree with the pure-Python path (which never overflows).
    """
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise _model_error(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise _model_error(f"format is not {MODEL_FORMAT!r}")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise _model_error("layers must be a non-empty list")

    layers: list[Layer] = []
    width, in_bound = FEATURES, _INPUT_BOUND
    for n, item in enumerate(raw_layers):
        what = f"layers[{n}]"
        if not isinstance(item, dict):
            raise _model_error(f"{what} must be an object")
        outputs = item.get("outputs")
        if item.get("inputs") != width or type(outputs) is not int or outputs < 1:
            raise _model_error(f"{what} has inputs/outputs that do not chain")
        rows = item.get("weights")
        if not isinstance(rows, list) or len(rows) != outputs:
            raise _model_error(f"{what}.weights must have {outputs} rows")
        weights = tuple(
            _int_list(row, width, -128, 127, f"{what}.weights[{j}]") for j, row in enumerate(rows)
        )
        bias = _int_list(item.get("bias"), outputs, -(2**31), 2**31 - 1, f"{what}.bias")
        mult = _int_list(item.get("multiplier"), outputs, 1, 2**31 - 1, f"{what}.multiplier")
        shift = _int_list(item.get("shift"), outputs, 1, 62, f"{what}.shift")
        out_min, out_max = item.get("out_min"), item.get("out_max")
        if (
            type(out_min) is not int
            or type(out_max) is not int
            or not -(2**31) <= out_min <= out_max <= 2**31 - 1
        ):
            raise _model_error(f"{what}.out_min/out_max must be an int32 range")
        for j in range(outputs):
            acc_bound = sum(map(abs, weights[j])) * in_bound + abs(bias[j])
            if acc_bound * mult[j] + (1 << (shift[j] - 1)) > _INT64_MAX:
                raise _model_error(f"{what} output {j} can overflow int64")
        layers.append(Layer(weights, bias, mult, shift, out_min, out_max))
        width, in_bound = outputs, max(abs(out_min), abs(out_max))
    if width != CLASSES:
        raise _model_error(f"the last layer must have {CLASSES} outputs")
    return Model(tuple(layers), hashlib.sha256(raw).hexdigest())


@functools.cache
def load_model() -> Model:
    """The shipped model, read from the package once per process."""
    raw = importlib.resources.files(_PACKAGE).joinpath(MODEL_RESOURCE).read_bytes()
    return parse_model(raw)


@functools.cache
def _numpy() -> ModuleType | None:
    """numpy if it is installed; it is an optional speed-up, never a requirement."""
    try:
        import numpy  # lazy on purpose: importing the kind must stay cheap
    except ImportError:
        return None
    return numpy


@functools.cache
def _numpy_layers() -> tuple[tuple[Any, Any, Any, Any, Any, int, int], ...]:
    """The model as int64 arrays, converted once per process."""
    np = _numpy()
    if np is None:
        raise RuntimeError("numpy is not installed")
    out = []
    for layer in load_model().layers:
        mult = np.array(layer.multiplier, dtype=np.int64)
        shift = np.array(layer.shift, dtype=np.int64)
        out.append(
            (
                np.array(layer.weights, dtype=np.int64).T.copy(),  # [input][output]
                np.array(layer.bias, dtype=np.int64),
                mult,
                shift,
                np.left_shift(np.int64(1), shift - 1),
                layer.out_min,
                layer.out_max,
            )
        )
    return tuple(out)


def _check_length(pixels: bytes) -> None:
    if len(pixels) % FEATURES:
        raise ValueError(f"input length {len(pixels)} is not a multiple of {FEATURES}")


def predict_reference(pixels: bytes) -> bytes:
    """Pure-Python integer inference: one label byte per 64-byte sample.

    This is the definition the numpy path must match; it also runs on devices that do
    not have numpy. Python integers never overflow, so it is correct by construction.
    """
    _check_length(pixels)
    layers = load_model().layers
    labels = bytearray()
    mul = operator.mul
    for start in range(0, len(pixels), FEATURES):
        x: Sequence[int] = pixels[start : start + FEATURES]
        for layer in layers:
            lo, hi = layer.out_min, layer.out_max
            y = []
            for row, b, m, s in zip(
                layer.weights, layer.bias, layer.multiplier, layer.shift, strict=True
            ):
                acc = sum(map(mul, row, x)) + b
                v = (acc * m + (1 << (s - 1))) >> s
                y.append(lo if v < lo else hi if v > hi else v)
            x = y
        # max() returns the first maximal element, so ties go to the lowest label.
        labels.append(max(range(len(x)), key=x.__getitem__))
    return bytes(labels)


def predict_numpy(pixels: bytes) -> bytes:
    """numpy integer inference with explicit int64 dtypes; same bytes as the reference.

    Integer matmul in numpy is exact (no BLAS, no float), and ``parse_model`` proved
    int64 cannot overflow, so only speed differs from ``predict_reference``.
    """
    _check_length(pixels)
    np = _numpy()
    if np is None:
        raise RuntimeError("numpy is not installed")
    if not pixels:
        return b""
    x = np.frombuffer(pixels, dtype=np.uint8).reshape(-1, FEATURES).astype(np.int64)
    for weights_t, bias, mult, shift, rounding, lo, hi in _numpy_layers():
        acc = np.matmul(x, weights_t, dtype=np.int64) + bias
        x = np.clip(np.right_shift(acc * mult + rounding, shift), lo, hi)
    # argmax returns the first maximal index, so ties go to the lowest label.
    labels: bytes = np.argmax(x, axis=1).astype(np.uint8).tobytes()
    return labels


def predict(pixels: bytes) -> bytes:
    """Labels for 64-byte samples, with numpy when available and pure Python otherwise."""
    if _numpy() is not None:
        return predict_numpy(pixels)
    return predict_reference(pixels)


def _field(key: str) -> str:
    return f"params.{key}"


def _require_int(value: Any, field: str, lo: int, hi: int) -> int:
    # bool is an int subclass; True must not pass as a batch size of 1.
    if type(value) is not int:
        raise TaskParamsError(field, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise TaskParamsError(field, f"must be in {lo}..{hi}, got {value}")
    return value


def _sample_count(samples: Any) -> int:
    field = _field("samples")
    if not isinstance(samples, str):
        raise TaskParamsError(field, f"must be a hex string, got {type(samples).__name__}")
    # Length first: it bounds the work done on a hostile string.
    if not samples:
        raise TaskParamsError(field, "must hold at least one sample")
    if len(samples) > MAX_SAMPLES * _SAMPLE_HEX:
        raise TaskParamsError(field, f"holds more than {MAX_SAMPLES} samples")
    if len(samples) % _SAMPLE_HEX:
        raise TaskParamsError(
            field,
            f"length {len(samples)} hex chars is not a multiple of {_SAMPLE_HEX} "
            f"({FEATURES} bytes per sample)",
        )
    if not _LOWER_HEX.fullmatch(samples):
        raise TaskParamsError(field, "must be lowercase hexadecimal")
    data = bytes.fromhex(samples)
    if data.translate(None, _VALID_PIXELS):
        pos = next(i for i, v in enumerate(data) if v > PIXEL_MAX)
        raise TaskParamsError(
            field,
            f"sample {pos // FEATURES} pixel {pos % FEATURES} is {data[pos]}, "
            f"pixels must be 0..{PIXEL_MAX}",
        )
    return len(data) // FEATURES


class ClassifyInt8:
    """Classify 8x8 digit images (pixels 0..16) into labels 0..9 with the int8 model.

    Params: ``{"samples": hex of n*64 bytes, "batch_size": 1..256}``, 1 <= n <= 4096,
    ``chunks == ceil(n / batch_size)``. Chunk i is samples [i*batch_size, (i+1)*batch_size)
    and yields one label byte per sample.
    """

    name = NAME

    def validate_params(self, params: Mapping[str, Any], chunks: int) -> None:
        """Refuse anything ``run_chunk`` could not run, naming the offending field."""
        if not isinstance(params, Mapping):
            raise TaskParamsError("params", "must be an object")
        for key in params:
            if key not in _PARAM_KEYS:
                raise TaskParamsError(_field(str(key)), "unknown parameter")
        for key in sorted(_PARAM_KEYS):
            if key not in params:
                raise TaskParamsError(_field(key), "is required")
        batch_size = _require_int(params["batch_size"], _field("batch_size"), 1, MAX_BATCH_SIZE)
        n = _sample_count(params["samples"])
        if type(chunks) is not int:
            raise TaskParamsError("chunks", f"must be an integer, got {type(chunks).__name__}")
        expected = -(-n // batch_size)
        if chunks != expected:
            raise TaskParamsError(
                "chunks",
                f"must be ceil({n} samples / batch_size {batch_size}) = {expected}, got {chunks}",
            )

    def run_chunk(self, params: Mapping[str, Any], index: int, chunks: int) -> bytes:
        """Labels for chunk ``index``; decodes only that chunk's slice of the hex input.

        Decoding just the slice keeps a whole task linear in its size even with
        ``batch_size`` 1, and a spot-check of k chunks costs k batches, not the task.
        """
        if type(index) is not int or not 0 <= index < chunks:
            raise TaskParamsError("index", f"must be in 0..{chunks - 1}, got {index!r}")
        step = params["batch_size"] * _SAMPLE_HEX
        part: str = params["samples"][index * step : (index + 1) * step]
        if not part:
            raise TaskParamsError("index", f"chunk {index} holds no samples")
        return predict(bytes.fromhex(part))


KIND = ClassifyInt8()
