"""The technique study end to end (`--quick` over two entries and one that fails): real Prefect API (test harness),
real MLflow store."""

import base64
import re
import shutil
from pathlib import Path

from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

ENTRIES = Path(__file__).resolve().parents[1] / "configs" / "study"
BROKEN = """technique: a broken entry
claim: A batch larger than the train split trains nothing at all.
base: ../regimes/few-labels.yaml
set: {model.name: mlp, training.batch_size: 5000}
vary: {model.dropout: [0.0, 0.5]}
measure: test_accuracy
direction: higher
fair: It fails before it could be unfair.
"""
TRANSFER = """technique: transfer learning, with a learning rate chosen per variant
claim: Fine-tuning an mlp trained on digits 0-4 beats training it from scratch on digits 5-9.
base: ../regimes/few-labels.yaml
set: {model.name: mlp, data.classes: ["5", "6", "7", "8", "9"], transfer.head_epochs: 1}
source: {data.classes: ["0", "1", "2", "3", "4"], split.shots: null}
vary: {transfer.strategy: [scratch, finetune]}
lr_grid: [0.001, 0.01]
measure: test_accuracy
direction: higher
fair: Both start from the source's architecture, each with its own LR.
"""


def test_a_quick_study_judges_every_entry_and_reports_a_failed_one_as_failed(prefect_api, tmp_path):
    from flows.technique_study import study_flow

    folder = tmp_path / "study"
    folder.mkdir()
    (tmp_path / "regimes").mkdir()
    shutil.copy(ENTRIES.parent / "regimes" / "few-labels.yaml", tmp_path / "regimes")
    for name in ("l1", "l2"):
        shutil.copy(ENTRIES / f"{name}.yaml", folder)
    (folder / "broken.yaml").write_text(BROKEN)
    (folder / "transfer.yaml").write_text(TRANSFER)
    out = study_flow(entries=str(folder), quick=True, overrides=["training.epochs=6"]).json()
    rows = {r["name"]: r for r in out["rows"]}
    assert list(rows) == ["broken", "l1", "l2", "transfer"]  # in file order, the failed one did not stop the others
    assert rows["broken"]["verdict"] == "failed" and "no variant trained" in rows["broken"]["error"]
    for name in ("l1", "l2"):
        r = rows[name]
        assert r["verdict"] in ("supported", "contradicted", "inconclusive") and r["n"] == 3  # --quick: 3 repeats
        assert abs(r["diff"]["mean"] - (r["treatment"]["mean"] - r["baseline"]["mean"])) < 1e-3  # paired, no failures
    assert rows["l1"]["measure"] == "near_zero_weights" and rows["l2"]["measure"] == "weight_norm"
    for name in ("l1", "l2"):  # the comparison's own verdict; a weight measure has no margin to need repeats for
        assert rows[name]["test"] in ("higher", "lower", "no detectable difference")  # a weight measure: no better
        assert rows[name]["test"] == rows[name]["treatments"][0]["test"] and rows[name]["repeats_needed"] is None
    assert "| repeats to decide |" in Path(out["report"]).read_text()
    assert out["counts"]["failed"] == 1 and sum(out["counts"].values()) == 4
    chosen = rows["transfer"]["learning_rates"]
    assert set(chosen) == {"transfer.strategy=scratch", "transfer.strategy=finetune"}
    assert set(chosen.values()) <= {0.001, 0.01} and rows["transfer"]["n"] == 3
    report, page = Path(out["report"]).read_text(), Path(out["html"]).read_text()
    for name in ("l1", "l2"):
        assert f"figures/{name}.png" in report and (Path(out["report"]).parent / "figures" / f"{name}.png").exists()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)  # self-contained: figures inlined
    assert len(images) == 3 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "failed" in page and "Fair because" not in page.split("broken")[0]
    client = MlflowClient()
    study = client.get_run(out["run_id"])
    assert {"report.md", "report.html", "figures"} <= {a.path for a in client.list_artifacts(out["run_id"])}
    assert study.data.metrics["claims_failed"] == 1
    comparisons = client.search_runs([study.info.experiment_id],
                                     f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{out['run_id']}'")
    kinds = [r.data.tags["trainflow.kind"] for r in comparisons]  # nested under the study: the source too
    assert sorted(set(kinds)) == ["comparison", "training"] and kinds.count("training") == 1
    assert {rows["l1"]["run_id"], rows["l2"]["run_id"]} <= {r.info.run_id for r in comparisons}
    grids = [r for r in comparisons if "vary.optimizer.lr" in r.data.params]  # one LR choice per variant,
    assert len(grids) == 2 and {r.data.params["repeats"] for r in grids} == {"2"}  # on the mean of lr_repeats
