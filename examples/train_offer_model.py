"""Train the example model: which store offer to show a player.

A scikit-learn decision tree on generated players, converted to ONNX with skl2onnx.
Its inputs are three features of the example features file; it outputs a label
(0: no offer, 1: starter pack, 2: premium bundle) and the class probabilities.

    python examples/train_offer_model.py            # writes examples/offer_model.onnx
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.tree import DecisionTreeClassifier

FEATURES = ["spend_total", "purchases_7d", "sessions_7d"]
HERE = Path(__file__).resolve().parent


def generate(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Players with spend, recent purchases and sessions, labelled by a simple rule."""
    rng = np.random.default_rng(seed)
    spend = rng.gamma(1.2, 20.0, n)
    purchases = rng.poisson(1.5, n).astype(float)
    sessions = rng.poisson(6.0, n).astype(float)
    label = np.where(spend > 40, 2, np.where((purchases == 0) & (sessions > 3), 1, 0))
    return np.column_stack([spend, purchases, sessions]).astype(np.float32), label


def main(out: Path = HERE / "offer_model.onnx") -> Path:
    x, y = generate(5000)
    model = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y)
    onnx = to_onnx(
        model,
        initial_types=[("float_input", FloatTensorType([None, len(FEATURES)]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    out.write_bytes(onnx.SerializeToString())
    manifest = {"inputs": {"float_input": FEATURES}, "defaults": {}}
    (out.parent / "offer_model.manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "offer_model.onnx"))
