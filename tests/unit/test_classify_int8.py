"""Tests for the ``classify-int8`` task kind.

The held-out accuracy is recomputed here with the shipped code from a fixture the training
script wrote, so the claim in the model file is checked without scikit-learn.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aeamc.shared.errors import TaskParamsError
from aeamc.shared.tasks import classify_int8 as ci8

ROOT = Path(__file__).resolve().parents[2]
HOLDOUT = ROOT / "tests" / "data" / "digits_holdout.json"
SHARED_SRC = ROOT / "shared" / "src"
MODEL_FILE = SHARED_SRC / "aeamc" / "shared" / "tasks" / ci8.MODEL_RESOURCE


@pytest.fixture(scope="module")
def holdout() -> dict[str, Any]:
    return json.loads(HOLDOUT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model_doc() -> dict[str, Any]:
    return json.loads(MODEL_FILE.read_text(encoding="utf-8"))


def make_params(n: int, batch_size: int, fill: int = 0) -> dict[str, Any]:
    return {"samples": bytes([fill]).hex() * (n * ci8.FEATURES), "batch_size": batch_size}


# --- the model and its stated accuracy -------------------------------------------------


def test_kind_identity() -> None:
    assert ci8.KIND.name == "classify-int8"
    assert isinstance(ci8.KIND, ci8.ClassifyInt8)


def test_model_loads_once() -> None:
    assert ci8.load_model() is ci8.load_model()
    assert len(ci8.load_model().digest) == 64


def test_heldout_accuracy_meets_the_bar(holdout: dict[str, Any], model_doc: dict[str, Any]) -> None:
    labels = holdout["labels"]
    params = {"samples": holdout["samples"], "batch_size": 32}
    chunks = math.ceil(len(labels) / 32)
    ci8.KIND.validate_params(params, chunks)
    predicted = b"".join(ci8.KIND.run_chunk(params, i, chunks) for i in range(chunks))

    assert len(predicted) == len(labels)
    correct = sum(p == y for p, y in zip(predicted, labels, strict=True))
    training = model_doc["training"]
    assert len(labels) == training["heldout_samples"]
    # The shipped code reproduces exactly what the training script measured.
    assert correct == training["int8_heldout_correct"]
    assert correct / len(labels) >= 0.90


def test_heldout_fixture_is_consistent(holdout: dict[str, Any], model_doc: dict[str, Any]) -> None:
    assert holdout["split_seed"] == model_doc["training"]["split_seed"]
    assert len(holdout["indices"]) == len(set(holdout["indices"])) == len(holdout["labels"])
    assert len(holdout["samples"]) == 2 * ci8.FEATURES * len(holdout["labels"])
    assert set(holdout["labels"]) == set(range(10))


def test_implementations_agree_on_heldout(holdout: dict[str, Any]) -> None:
    pixels = bytes.fromhex(holdout["samples"])
    assert ci8.predict_numpy(pixels) == ci8.predict_reference(pixels)


# --- numpy and pure Python are bit-identical ------------------------------------------

pixel_samples = st.lists(
    st.binary(min_size=ci8.FEATURES, max_size=ci8.FEATURES).map(
        lambda b: bytes(v % (ci8.PIXEL_MAX + 1) for v in b)
    ),
    min_size=1,
    max_size=8,
).map(b"".join)

# Adversarial: only the extremes 0 and 16, which maximise accumulators and favour ties.
extreme_samples = st.lists(
    st.lists(st.sampled_from([0, ci8.PIXEL_MAX]), min_size=ci8.FEATURES, max_size=ci8.FEATURES),
    min_size=1,
    max_size=8,
).map(lambda rows: bytes(v for row in rows for v in row))

# Out-of-range bytes never reach a device (validation refuses them), but the int64 bound
# in the model check covers them, so the paths must agree here too.
any_bytes = st.integers(min_value=1, max_value=6).flatmap(
    lambda n: st.binary(min_size=n * ci8.FEATURES, max_size=n * ci8.FEATURES)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pixels=st.one_of(pixel_samples, extreme_samples))
@example(pixels=bytes(ci8.FEATURES))
@example(pixels=bytes([ci8.PIXEL_MAX]) * ci8.FEATURES)
def test_numpy_matches_reference(pixels: bytes) -> None:
    expected = ci8.predict_reference(pixels)
    assert ci8.predict_numpy(pixels) == expected
    assert len(expected) == len(pixels) // ci8.FEATURES
    assert all(0 <= label <= 9 for label in expected)


@settings(max_examples=150, deadline=None)
@given(pixels=any_bytes)
@example(pixels=bytes([255]) * ci8.FEATURES)
def test_numpy_matches_reference_on_any_bytes(pixels: bytes) -> None:
    assert ci8.predict_numpy(pixels) == ci8.predict_reference(pixels)


def test_ties_go_to_the_lowest_label(monkeypatch: pytest.MonkeyPatch) -> None:
    # A model whose logits are all equal: every implementation must answer 0.
    layer = ci8.Layer(
        weights=tuple((0,) * ci8.FEATURES for _ in range(10)),
        bias=(5,) * 10,
        multiplier=(1 << 30,) * 10,
        shift=(30,) * 10,
        out_min=-(2**31),
        out_max=2**31 - 1,
    )
    monkeypatch.setattr(ci8, "load_model", lambda: ci8.Model((layer,), "0" * 64))
    ci8._numpy_layers.cache_clear()
    try:
        pixels = bytes(range(ci8.FEATURES))
        assert ci8.predict_reference(pixels) == b"\x00"
        assert ci8.predict_numpy(pixels) == b"\x00"
    finally:
        ci8._numpy_layers.cache_clear()


def test_model_check_refuses_int64_overflow(model_doc: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(model_doc))
    # Hidden activations allowed up to int32 make the logit layer's products exceed int64.
    doc["layers"][0]["out_max"] = 2**31 - 1
    with pytest.raises(ValueError, match="overflow"):
        ci8.parse_model(json.dumps(doc).encode())


def test_model_check_refuses_out_of_range_weight(model_doc: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(model_doc))
    doc["layers"][1]["weights"][0][0] = 128
    with pytest.raises(ValueError, match="weights"):
        ci8.parse_model(json.dumps(doc).encode())


# --- chunking ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch_size"), [(1, 1), (32, 32), (33, 32), (100, 7), (5, 256)])
def test_chunk_lengths(n: int, batch_size: int, holdout: dict[str, Any]) -> None:
    params = {"samples": holdout["samples"][: n * 2 * ci8.FEATURES], "batch_size": batch_size}
    chunks = math.ceil(n / batch_size)
    ci8.KIND.validate_params(params, chunks)
    outs = [ci8.KIND.run_chunk(params, i, chunks) for i in range(chunks)]
    for out in outs[:-1]:
        assert len(out) == batch_size
    assert len(outs[-1]) == n - (chunks - 1) * batch_size
    assert b"".join(outs) == ci8.predict_reference(bytes.fromhex(params["samples"]))


def test_chunk_content_is_its_own_slice(holdout: dict[str, Any]) -> None:
    params = {"samples": holdout["samples"][: 10 * 2 * ci8.FEATURES], "batch_size": 4}
    pixels = bytes.fromhex(params["samples"])
    assert ci8.KIND.run_chunk(params, 1, 3) == ci8.predict_reference(pixels[4 * 64 : 8 * 64])
    assert ci8.KIND.run_chunk(params, 2, 3) == ci8.predict_reference(pixels[8 * 64 :])


@pytest.mark.parametrize("index", [-1, 3, True, "0"])
def test_run_chunk_refuses_bad_index(index: Any) -> None:
    params = make_params(10, 4)
    with pytest.raises(TaskParamsError) as err:
        ci8.KIND.run_chunk(params, index, 3)
    assert err.value.field == "index"


# --- parameter validation -------------------------------------------------------------


def test_valid_params_pass() -> None:
    ci8.KIND.validate_params(make_params(1, 1), 1)
    ci8.KIND.validate_params(make_params(4096, 256, fill=16), 16)
    ci8.KIND.validate_params(make_params(257, 256), 2)


def _bad(params: Any, chunks: Any, field: str) -> None:
    with pytest.raises(TaskParamsError) as err:
        ci8.KIND.validate_params(params, chunks)
    assert err.value.field == field
    assert err.value.code == "bad_params"
    assert field in str(err.value)


SAMPLE = "00" * ci8.FEATURES


@pytest.mark.parametrize(
    ("samples", "why"),
    [
        ("", "empty"),
        ("zz" * ci8.FEATURES, "not hex"),
        ("0G" + "00" * (ci8.FEATURES - 1), "not hex"),
        ("0A" + "00" * (ci8.FEATURES - 1), "uppercase hex"),
        (" 0" + "00" * (ci8.FEATURES - 1), "whitespace"),
        ("00" * (ci8.FEATURES - 1), "63 bytes"),
        ("00" * (ci8.FEATURES + 1), "65 bytes"),
        ("0" * (2 * ci8.FEATURES + 1), "odd length"),
        ("11" + "00" * (ci8.FEATURES - 1), "pixel 17"),
        (SAMPLE + "00" * (ci8.FEATURES - 1) + "ff", "pixel 255 in a later sample"),
        (SAMPLE * (ci8.MAX_SAMPLES + 1), "too many samples"),
        ("\u0660" * (2 * ci8.FEATURES), "non-ASCII digits"),
        (b"\x00".hex().encode() * ci8.FEATURES, "bytes, not str"),
        (None, "null"),
        (list(range(ci8.FEATURES)), "list"),
    ],
)
def test_bad_samples(samples: Any, why: str) -> None:
    _bad({"samples": samples, "batch_size": 1}, 1, "params.samples")


@pytest.mark.parametrize("batch_size", [0, 257, -1, True, False, 1.0, "1", None, 2**70])
def test_bad_batch_size(batch_size: Any) -> None:
    _bad({"samples": SAMPLE, "batch_size": batch_size}, 1, "params.batch_size")


@pytest.mark.parametrize(
    ("n", "batch_size", "chunks"),
    [(1, 1, 0), (1, 1, 2), (10, 4, 2), (10, 4, 4), (256, 256, 2), (257, 256, 1)],
)
def test_chunks_mismatch(n: int, batch_size: int, chunks: int) -> None:
    _bad(make_params(n, batch_size), chunks, "chunks")


@pytest.mark.parametrize("chunks", [True, 1.0, "1", None])
def test_chunks_wrong_type(chunks: Any) -> None:
    _bad(make_params(1, 1), chunks, "chunks")


def test_unknown_key() -> None:
    _bad({"samples": SAMPLE, "batch_size": 1, "model": "other"}, 1, "params.model")


@pytest.mark.parametrize("missing", ["samples", "batch_size"])
def test_missing_key(missing: str) -> None:
    params = {"samples": SAMPLE, "batch_size": 1}
    del params[missing]
    _bad(params, 1, f"params.{missing}")


@pytest.mark.parametrize("params", [None, [], "samples", 3])
def test_params_not_an_object(params: Any) -> None:
    _bad(params, 1, "params")


# --- numpy stays optional -------------------------------------------------------------


def _run_fresh(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SHARED_SRC), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_import_and_validation_do_not_import_numpy() -> None:
    result = _run_fresh(
        """
        import sys
        from aeamc.shared.tasks import classify_int8 as m
        assert "numpy" not in sys.modules, "import pulled in numpy"
        m.KIND.validate_params({"samples": "00" * 64, "batch_size": 1}, 1)
        m.load_model()
        assert "numpy" not in sys.modules, "validation pulled in numpy"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_runs_without_numpy(holdout: dict[str, Any]) -> None:
    samples = holdout["samples"][: 40 * 2 * ci8.FEATURES]
    expected = ci8.predict_numpy(bytes.fromhex(samples)).hex()
    result = _run_fresh(
        f"""
        import sys
        sys.modules["numpy"] = None  # makes "import numpy" raise ImportError
        from aeamc.shared.tasks import classify_int8 as m
        params = {{"samples": "{samples}", "batch_size": 16}}
        m.KIND.validate_params(params, 3)
        print(b"".join(m.KIND.run_chunk(params, i, 3) for i in range(3)).hex())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
