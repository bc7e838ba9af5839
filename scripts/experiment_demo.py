"""Make the README's experiment report and plot on a real server with test-like data.

Starts `playerpulse serve` in a temporary directory, uploads a logistic regression
(scikit-learn, skl2onnx) twice, splits players 50/50, predicts for 4,000 players, and
plants purchases: each player buys with the probability the model gave them, plus 4
points under version 2 (the planted uplift). Then it prints the report and draws
``docs/experiment.png`` with `playerpulse analytics report experiment --plot`.

    .venv/bin/python scripts/experiment_demo.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import onnx_models as m  # noqa: E402
from tests.e2e.test_experiments import CLASSIFIER_MANIFEST, post_events, rfc3339, rows  # noqa: E402
from tests.support import ServeProcess, wait_for  # noqa: E402

PLAYERS = 4000
LIFT = {1: 0.0, 2: 0.04}


def logistic_model() -> bytes:
    """Will this player buy? A logistic regression on the three features."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rows(rng, 5000)
    chance = 1 / (1 + np.exp(-(-2.5 + 0.02 * x[:, 0] + 0.4 * x[:, 1] - 0.05 * x[:, 2])))
    y = (rng.random(5000) < chance).astype(int)
    model = LogisticRegression().fit(x.astype(np.float32), y)
    return bytes(
        to_onnx(
            model, initial_types=[("float_input", FloatTensorType([None, 3]))], target_opset=17
        ).SerializeToString()
    )


def drift(server: ServeProcess, workdir: Path) -> str:
    """A model uploaded with its training set; live spend shifted up by 40: PSI per feature."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    training = rows(np.random.default_rng(10), 5000)
    pq.write_table(
        pa.table({f: training[:, i] for i, f in enumerate(m.FEATURES)}), workdir / "train.parquet"
    )
    (workdir / "model.onnx").write_bytes(m.sklearn_regressor())
    (workdir / "manifest.json").write_text(m.MANIFEST)
    server.cli(
        "models",
        "upload",
        "--game",
        "demo",
        "spend",
        str(workdir / "model.onnx"),
        "--manifest",
        str(workdir / "manifest.json"),
        "--training",
        str(workdir / "train.parquet"),
    )
    live = rows(np.random.default_rng(11), 2000, spend_shift=40.0)
    with server.client(server.key("demo", "admin")) as admin:
        for start in range(0, 2000, 500):
            instances = [
                {"features": dict(zip(m.FEATURES, map(float, v), strict=True))}
                for v in live[start : start + 500]
            ]
            admin.post("/v1/models/spend/predict", json={"instances": instances})

        def landed() -> bool:
            body = admin.get("/v1/admin/models/spend/drift").json()
            return all(r["live"] == 2000 for r in body["rows"])

        wait_for(landed, timeout=120, interval=1)
    return server.cli(
        "analytics", "report", "drift", "--game", "demo", "--model", "spend", "--format", "csv"
    ).stdout


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="experiment-demo-"))
    server = ServeProcess(workdir).start()
    try:
        raw = logistic_model()
        with server.client(server.key("demo", "admin")) as admin:
            for activate in ("true", "false"):
                admin.post(
                    "/v1/admin/models/offers",
                    params={"activate": activate},
                    files={
                        "model": ("m.onnx", raw),
                        "manifest": (None, CLASSIFIER_MANIFEST),
                    },
                ).raise_for_status()
            admin.put("/v1/admin/models/offers/rollout", json={"split": {"1": 50, "2": 50}})
            admin.put(
                "/v1/admin/models/offers/outcome",
                json={"event": "purchase", "within": "24h", "value": "any"},
            ).raise_for_status()
            rng = np.random.default_rng(7)
            values = rows(rng, PLAYERS)
            events = []
            for start in range(0, PLAYERS, 500):
                instances = [
                    {
                        "player_id": f"p{i}",
                        "features": dict(zip(m.FEATURES, map(float, values[i]), strict=True)),
                    }
                    for i in range(start, min(start + 500, PLAYERS))
                ]
                answer = admin.post("/v1/models/offers/predict", json={"instances": instances})
                for p in answer.json()["predictions"]:
                    score = p["outputs"]["output_probability"]["1"]
                    chance = score + LIFT[p["version"]]
                    if rng.random() < chance:
                        events.append(
                            {
                                "event_id": f"buy-{p['player_id']}",
                                "player_id": p["player_id"],
                                "type": "purchase",
                                "ts": rfc3339(datetime.now(UTC)),
                                "props": {"amount": 4.99},
                            }
                        )
            post_events(admin, events)

            def landed() -> bool:
                body = admin.get("/v1/admin/models/offers/experiment").json()
                got = sum(r["converted"] for r in body["rows"])
                return sum(r["players"] for r in body["rows"]) == PLAYERS and got == len(events)

            wait_for(landed, timeout=120, interval=1)
        plot = workdir / "experiment.png"
        table = server.cli(
            "analytics",
            "report",
            "experiment",
            "--game",
            "demo",
            "--model",
            "offers",
            "--plot",
            str(plot),
        )
        print(table.stdout)
        print(table.stderr, file=sys.stderr)
        print(drift(server, workdir))
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(plot, ROOT / "docs" / "experiment.png")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
