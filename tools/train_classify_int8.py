#!/usr/bin/env python3
"""Train, quantize and export the model behind the ``classify-int8`` task kind.

Development-time only: devices never train, they load the JSON this script writes. The
classifier is trained in floating point, then converted to int8 weights, int32 biases and
fixed-point requantization (multiplier + right shift, as TFLite/gemmlowp do) so that the
shipped inference needs integer arithmetic only and gives the same bytes on every platform.
The held-out accuracy is measured on that *integer* inference, because that is what devices
run and what the spot-check re-executes.

Everything is seeded and single-threaded, so rerunning on the same library versions writes
the same files byte for byte; ``--check`` verifies that without writing.

Outputs:
  shared/src/aeamc/shared/tasks/classify_int8_model.json  the model (shipped in the wheel)
  tests/data/digits_holdout.json                          held-out samples + labels
  docs/classify-int8.md                                    what the model is and how good

Usage: python tools/train_classify_int8.py [--check]   (needs numpy and scikit-learn)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
MODEL_PATH = ROOT / "shared/src/aeamc/shared/tasks/classify_int8_model.json"
HOLDOUT_PATH = ROOT / "tests/data/digits_holdout.json"
DOC_PATH = ROOT / "docs/classify-int8.md"

FORMAT = "aeamc-classify-int8/1"
SPLIT_SEED = 20240611
TRAIN_SEED = 7
HELDOUT_FRACTION = 0.25
HIDDEN = 32
FEATURES = 64
CLASSES = 10
PIXEL_MAX = 16
# Activations between layers are unsigned 7-bit after the fused ReLU, so they also fit
# int8 and a product with an int8 weight never exceeds 127 * 127.
ACT_MAX = 127
WEIGHT_MAX = 127
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
MIN_ACCURACY = 0.90


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Express a positive real scale as ``multiplier / 2**shift`` with a 31-bit multiplier.

    A normalised multiplier in [2**30, 2**31) keeps 31 significant bits whatever the
    magnitude of the scale, which is the gemmlowp/TFLite representation.
    """
    if not real > 0.0:
        raise ValueError(f"requantization scale must be positive, got {real}")
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2**exponent, 0.5 <= m < 1
    multiplier = round(mantissa * (1 << 31))
    if multiplier == 1 << 31:
        multiplier //= 2
        exponent += 1
    shift = 31 - exponent
    if not 1 <= shift <= 62:
        raise ValueError(f"requantization scale {real} out of range (shift {shift})")
    return multiplier, shift


def quantize_rows(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 quantization (rows are output channels).

    Per-channel scales matter for small layers: one large weight in one neuron would
    otherwise crush the resolution of every other neuron.
    """
    peak = np.abs(weights).max(axis=1)
    scale = np.where(peak > 0, peak / WEIGHT_MAX, 1.0)
    q = np.clip(np.rint(weights / scale[:, None]), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64)
    return q, scale


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Round-half-up fixed-point scaling, the same formula the shipped kind uses."""
    return (acc * multiplier + (np.int64(1) << (shift - 1))) >> shift


def integer_predict(layers: list[dict[str, Any]], pixels: np.ndarray) -> np.ndarray:
    """Independent re-implementation of the shipped integer inference (int64 throughout).

    Kept separate from the kind's code on purpose: the unit tests recompute the held-out
    accuracy with the shipped kind and compare it to the number stored here.
    """
    x = pixels.astype(np.int64)
    for layer in layers:
        w = np.array(layer["weights"], dtype=np.int64)
        b = np.array(layer["bias"], dtype=np.int64)
        m = np.array(layer["multiplier"], dtype=np.int64)
        s = np.array(layer["shift"], dtype=np.int64)
        x = np.clip(requantize(x @ w.T + b, m, s), layer["out_min"], layer["out_max"])
    return np.argmax(x, axis=1)


def train_float(x_train: np.ndarray, y_train: np.ndarray) -> MLPClassifier:
    """Float 64-32-10 ReLU MLP; L-BFGS is deterministic and converges well on 1.3k samples."""
    clf = MLPClassifier(
        hidden_layer_sizes=(HIDDEN,),
        activation="relu",
        solver="lbfgs",
        alpha=1e-2,
        max_iter=2000,
        random_state=TRAIN_SEED,
    )
    with warnings.catch_warnings():
        # Hitting max_iter is fine: accuracy is what is checked, on the integer model.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return clf


def quantize(clf: MLPClassifier, x_train: np.ndarray) -> tuple[list[dict[str, Any]], float]:
    """Post-training quantization, calibrated on the training split only."""
    w1 = clf.coefs_[0].T  # (HIDDEN, FEATURES)
    b1 = clf.intercepts_[0]
    w2 = clf.coefs_[1].T  # (CLASSES, HIDDEN)
    b2 = clf.intercepts_[1]

    in_scale = 1.0 / PIXEL_MAX  # the float model saw pixel / 16
    hidden_float = np.maximum(x_train @ w1.T + b1, 0.0)
    hidden_scale = float(hidden_float.max()) / ACT_MAX

    w1q, w1s = quantize_rows(w1)
    b1q = np.rint(b1 / (in_scale * w1s)).astype(np.int64)
    m1, s1 = zip(*(quantize_multiplier(in_scale * s / hidden_scale) for s in w1s), strict=True)

    w2q, w2s = quantize_rows(w2)
    b2q = np.rint(b2 / (hidden_scale * w2s)).astype(np.int64)
    # One common logit scale so argmax compares like with like; taking the coarsest
    # channel keeps every multiplier <= 1, and the int32 logits stay far from saturation.
    out_scale = float(hidden_scale * w2s.max())
    m2, s2 = zip(*(quantize_multiplier(hidden_scale * s / out_scale) for s in w2s), strict=True)

    for b in (b1q, b2q):
        if b.min() < INT32_MIN or b.max() > INT32_MAX:
            raise ValueError("bias does not fit int32")

    layers = [
        {
            "name": "hidden",
            "inputs": FEATURES,
            "outputs": HIDDEN,
            "activation": "relu",
            "weights": w1q.tolist(),
            "bias": b1q.tolist(),
            "multiplier": list(m1),
            "shift": list(s1),
            "out_min": 0,
            "out_max": ACT_MAX,
        },
        {
            "name": "logits",
            "inputs": HIDDEN,
            "outputs": CLASSES,
            "activation": "none",
            "weights": w2q.tolist(),
            "bias": b2q.tolist(),
            "multiplier": list(m2),
            "shift": list(s2),
            "out_min": INT32_MIN,
            "out_max": INT32_MAX,
        },
    ]
    return layers, hidden_scale


def dump_json(obj: Any) -> str:
    """Sorted, indented JSON with innermost integer lists on one line.

    Sorted keys make the bytes a function of the content only; collapsing number lists
    keeps a weight row per line, so a retrain gives a readable diff.
    """
    text = json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True)
    collapse = re.compile(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]")
    text = collapse.sub(lambda m: "[" + ",".join(re.split(r",\s*", m.group(1))) + "]", text)
    return text + "\n"


def render_doc(model: dict[str, Any], model_text: str) -> str:
    """The user-facing page, generated so its numbers can never drift from the model."""
    t = model["training"]
    sha = hashlib.sha256(model_text.encode("ascii")).hexdigest()
    size = len(model_text.encode("ascii"))
    float_correct = f"{t['float_heldout_correct']}/{t['heldout_samples']}"
    int_correct = f"{t['int8_heldout_correct']}/{t['heldout_samples']}"
    return f"""# The `classify-int8` task kind

<!-- Generated by tools/train_classify_int8.py; rerun the script instead of editing. -->

`classify-int8` is the AI-inference task kind ([spec §3](spec.md#3-task-kinds)): a device
classifies a batch of 8×8 handwritten-digit images with a small int8-quantized neural
network that ships inside the package. Inference uses integer arithmetic only, so every
device and the coordinator's spot-check re-execution produce the same bytes.

## Model

- Architecture: `{model["architecture"]}` — fully connected {FEATURES}→{HIDDEN} with ReLU,
  then {HIDDEN}→{CLASSES} logits, argmax (ties go to the lowest label).
- int8 weights (symmetric, per output channel, range ±{WEIGHT_MAX}), int32 biases,
  int64 accumulators, fixed-point requantization per output channel:
  `y = (acc * multiplier + 2**(shift-1)) >> shift` (arithmetic shift, i.e. round half up),
  then clamp — to 0..{ACT_MAX} after the hidden layer (this is the ReLU), to int32 for logits.
- File: `shared/src/aeamc/shared/tasks/classify_int8_model.json`, {size} bytes,
  SHA-256 `{sha}`.
  Agents and the coordinator must run the same file: a different model gives different
  labels and would fail spot-checks.

## Task parameters and output

```json
{{"samples": "<lowercase hex of n*64 bytes>", "batch_size": 32}}
```

- Each sample is 64 bytes: the 8×8 image row by row, each byte a pixel intensity 0..16
  exactly as in scikit-learn's `load_digits` (the network's input scale is 1/16).
- 1 ≤ n ≤ 4096 samples, 1 ≤ `batch_size` ≤ 256, and the task's `chunks` must equal
  ceil(n / `batch_size`). Anything else is refused with `bad_params` naming the field.
- Chunk i covers samples i·batch_size … (i+1)·batch_size − 1 (the last chunk may be
  shorter); its output is one byte per sample, the predicted digit 0..9.
- numpy (the `fast` extra) is used when installed; a pure-Python implementation gives the
  same bytes without it.

## Training and quantization

- Data: `sklearn.datasets.load_digits`, {t["samples_total"]} images bundled with
  scikit-learn (no download). Stratified split, seed {t["split_seed"]}, held-out fraction
  {t["heldout_fraction"]}: {t["train_samples"]} training and {t["heldout_samples"]} held-out
  images. The held-out images and labels are in `tests/data/digits_holdout.json`.
- Float model: scikit-learn `MLPClassifier` on pixel/16 (L-BFGS, L2 alpha {t["alpha"]},
  seed {t["train_seed"]}).
- Post-training quantization calibrated on the training split only: per-channel weight
  scales max|w|/127, hidden activation scale = max training activation / 127, bias scale =
  input scale × weight scale, requantization multipliers normalised to [2^30, 2^31).

## Accuracy on the held-out split

| inference | accuracy | correct |
|---|---|---|
| float (scikit-learn) | {t["float_heldout_accuracy"]:.4f} | {float_correct} |
| **int8 (shipped)** | **{t["int8_heldout_accuracy"]:.4f}** | {int_correct} |

Integer and float predictions agree on {t["float_int8_agreement"]} of the
{t["heldout_samples"]} held-out images. The stated accuracy of the kind is the int8 figure;
the unit tests recompute it with the shipped code and require at least {MIN_ACCURACY:.2f}.

Trained with numpy {t["numpy_version"]} and scikit-learn {t["sklearn_version"]}.

## Retraining

```sh
python tools/train_classify_int8.py          # rewrite the model, held-out fixture, this page
python tools/train_classify_int8.py --check  # exit status 1 if any of them would change
```

The script is seeded and single-threaded, so on the same library versions it reproduces
the files byte for byte. Other numpy/scikit-learn/BLAS versions may move a float weight
across a rounding boundary and so change the model; that is a new model, to be released
to agents and the coordinator together.
"""


def build() -> dict[Path, str]:
    """Run the whole pipeline and return the file contents it produces."""
    digits = load_digits()
    pixels = digits.data.astype(np.int64)
    labels = digits.target.astype(np.int64)
    if pixels.min() < 0 or pixels.max() > PIXEL_MAX or pixels.shape[1] != FEATURES:
        raise ValueError("load_digits changed shape or range")

    indices = np.arange(len(labels))
    train_idx, held_idx = train_test_split(
        indices, test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    held_idx = np.sort(held_idx)
    train_idx = np.sort(train_idx)

    x_train = pixels[train_idx] / PIXEL_MAX
    y_train = labels[train_idx]
    x_held = pixels[held_idx]
    y_held = labels[held_idx]

    with threadpool_limits(limits=1):
        clf = train_float(x_train, y_train)
        float_pred = clf.predict(x_held / PIXEL_MAX)
        layers, _ = quantize(clf, x_train)
        int_pred = integer_predict(layers, x_held)

    held = len(held_idx)
    float_correct = int((float_pred == y_held).sum())
    int_correct = int((int_pred == y_held).sum())
    accuracy = int_correct / held
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"integer held-out accuracy {accuracy:.4f} below {MIN_ACCURACY}")

    model = {
        "format": FORMAT,
        "architecture": f"mlp-{FEATURES}-{HIDDEN}-{CLASSES}-relu",
        "input": {
            "features": FEATURES,
            "layout": "8x8 image, row-major, one byte per pixel",
            "pixel_min": 0,
            "pixel_max": PIXEL_MAX,
            "scale": f"1/{PIXEL_MAX}",
            "zero_point": 0,
        },
        "requantization": "y = clamp((acc * multiplier + (1 << (shift - 1))) >> shift, "
        "out_min, out_max); acc = sum(w * x) + bias in int64; >> is arithmetic",
        "output": "argmax over logits, ties to the lowest index",
        "classes": CLASSES,
        "layers": layers,
        "training": {
            "dataset": "sklearn.datasets.load_digits",
            "samples_total": len(labels),
            "train_samples": len(train_idx),
            "heldout_samples": held,
            "heldout_fraction": HELDOUT_FRACTION,
            "split": "sklearn.model_selection.train_test_split, stratified",
            "split_seed": SPLIT_SEED,
            "train_seed": TRAIN_SEED,
            "alpha": 1e-2,
            "float_heldout_accuracy": round(float_correct / held, 6),
            "float_heldout_correct": float_correct,
            "int8_heldout_accuracy": round(accuracy, 6),
            "int8_heldout_correct": int_correct,
            "float_int8_agreement": int((float_pred == int_pred).sum()),
            "numpy_version": np.__version__,
            "sklearn_version": sklearn.__version__,
        },
    }
    model_text = dump_json(model)
    holdout = {
        "dataset": "sklearn.datasets.load_digits",
        "split_seed": SPLIT_SEED,
        "indices": held_idx.tolist(),
        "labels": y_held.tolist(),
        "samples": x_held.astype(np.uint8).tobytes().hex(),
    }
    return {
        MODEL_PATH: model_text,
        HOLDOUT_PATH: dump_json(holdout),
        DOC_PATH: render_doc(model, model_text),
    }


def main(argv: list[str] | None = None) -> int:
    """Write the outputs, or with ``--check`` fail when the committed ones are stale (CI)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only verify the committed files are up to date"
    )
    args = parser.parse_args(argv)
    outputs = build()
    stale = [
        p for p, text in outputs.items() if not p.exists() or p.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
    print(json.dumps(json.loads(outputs[MODEL_PATH])["training"], sort_keys=True, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
