"""Transfer learning: validate -> fetch the source -> ingest -> split -> normalize -> check the source fits ->
augment -> train from its weights -> evaluate -> register. And the built-in demonstration: digits 0-4 ->
digits 5-9 with a few labeled examples per class, transfer against scratch."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows import plans
from flows.common import as_model, parameter, prepare_data, train_and_register
from flows.training import DEFAULT, training_pipeline
from tasks import tracking
from tasks.chain.refs import SourceRef
from tasks.chain.report import report, run_url
from tasks.record import start_run
from tasks.results import SourceRun
from tasks.settings import workspace
from tasks.summaries import Lineage, Transfer, TransferDemo
from tasks.transfer.source import check_source, fetch_source, registered_source, transfer_report
from trainlib.config import PipelineConfig, override

DIGITS_0_4 = {"name": "digits-0-4", "data.classes": ["0", "1", "2", "3", "4"]}
# The few-shot target: 5 x K training samples, so small batches; a head-first fine-tune at a moderate LR.
DIGITS_5_9 = {"name": "digits-5-9", "data.classes": ["5", "6", "7", "8", "9"], "training.batch_size": 16,
              "optimizer.lr": 0.003, "transfer.head_epochs": 2, "transfer.backbone_lr": 0.3}
DEMO_STRATEGIES = ("finetune", "feature_extraction", "scratch")


def run_name() -> str:
    config = parameter("config", PipelineConfig)
    return f"{config.name}: {config.transfer.strategy} transfer"


def with_source_architecture(config: PipelineConfig, source: SourceRef) -> PipelineConfig:
    """The config with the source's architecture (model name and sizes; dropout stays the config's)."""
    sizes = {f"model.{k}": v for k, v in source.options.items() if k != "dropout"}
    return override(config, {"model.name": source.model, **sizes})


@flow(name="transfer", flow_run_name=run_name)
def transfer_pipeline(config: PipelineConfig | str, refresh: bool = False,
                      parent_run_id: str | None = None) -> Transfer:
    """Train `config` (or a config file) starting from `config.transfer.source` as `config.transfer.strategy`
    says; register through the gate. Returns the run summary plus the transfer's lineage."""
    config = plans.transfer(as_model(config, PipelineConfig))
    ws = str(workspace(str(flow_run.id)))
    source = fetch_source(config.transfer.source, ws)
    config = with_source_architecture(config, source)
    run_id = start_run(config, parent_run_id=parent_run_id, run_name=f"{config.transfer.strategy} from "
                       f"{source.uri}", kind="transfer")
    with tracking.finishing(run_id):
        dataset, manifest, stats = prepare_data(config, run_id, refresh)
        weights = check_source(config, source, dataset, stats, run_id)
        trained, metrics, registered = train_and_register(config, dataset, manifest, stats, ws, run_id, source)
        lineage = Lineage(source.uri, config.transfer.strategy, trained.history, source.source_run_id,
                          len(weights.copied))
        return Transfer(report(config.name, run_id, trained, metrics, registered), lineage)


@flow(name="transfer-demo", flow_run_name=lambda: f"transfer demo: {flow_run.parameters['shots']} shots")
def transfer_demo(config: PipelineConfig | str = DEFAULT, shots: int = 10, refresh: bool = False) -> TransferDemo:
    """Train (or reuse) a source on digits 0-4, then learn digits 5-9 from `shots` labeled examples per class
    by fine-tuning, by feature extraction and from scratch; report accuracy, epochs and time of each."""
    config = as_model(config, PipelineConfig)
    source_config = override(config, DIGITS_0_4)
    source = registered_source(source_config.name, source_config.register.alias)
    if source is None:
        trained = training_pipeline(source_config, refresh=refresh)
        source = SourceRun(trained.uri, trained.run_id,
                           *(trained.metrics.get(k) for k in ("test_accuracy", "best_epoch", "train_seconds")))
    target = override(config, DIGITS_5_9 | {"split.shots": shots, "transfer.source": source.uri})
    run_id = start_run(target, {"demo.shots": shots, "demo.source": source.uri}, kind="transfer-demo",
                       run_name=f"transfer demo: {shots} shots per class")
    ws = str(workspace(str(flow_run.id)))
    with tracking.finishing(run_id):
        runs = {s: transfer_pipeline(override(target, {"transfer.strategy": s}), refresh, run_id)
                for s in DEMO_STRATEGIES}
        rows = transfer_report(target.name, run_id, source, runs, ws)
        return TransferDemo(run_id, run_url(run_id), runs["finetune"], shots, rows, source,
                            [r.run.run_id for r in runs.values()])
