"""The flow commands of `trainflow` (run, tune, compare, lr-find, study, variance, ensemble, transfer, rerun): their
arguments, and
how each is checked, started (cli/execute.py), watched (cli/progress.py) and summarized (cli/summaries.py).

Every command first builds its plan (flows/plans.py: the same checks its flow makes), so bad input fails
before anything starts. With --json, stdout carries exactly one JSON object; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import options
from cli.execute import execute
from flows import preflight
from trainlib.errors import TrainflowError


def _run(args: argparse.Namespace) -> int:
    from cli import summaries
    from cli.progress import EpochProgress
    from flows import plans
    from trainlib.config import load_config

    cfg = plans.run(load_config(args.config, options.overrides(args)))  # bad input fails here, before anything starts
    preflight.check([cfg])

    def start():
        from flows.training import training_pipeline

        return training_pipeline(cfg, refresh=args.refresh)

    return execute(args, plans.title(cfg), start, summaries.run, EpochProgress(cfg.training.epochs, "training"))


def _tune(args: argparse.Namespace) -> int:
    preflight.probe(args.runner)  # first: an address where nothing answers is told before torch loads
    from cli import summaries
    from cli.progress import RunProgress
    from flows import plans
    from trainlib.config import load_config
    from trainlib.tuning import load_search

    plan = plans.tune(load_config(args.config, options.overrides(args)), load_search(args.search), args.runner)
    preflight.check([plan.config, plan.trial_base])
    search = plan.search

    def start():
        from flows.tuning import tuning_flow

        return tuning_flow(plan.config, search, refresh=args.refresh, runner=plan.runner)

    return execute(args, f"{plan.config.name}: {search.strategy} search over {', '.join(search.space)}", start,
                    summaries.tuning, RunProgress(search.budget(), f"{search.strategy} search"))


def _compare(args: argparse.Namespace) -> int:
    preflight.probe(args.runner)  # first: an address where nothing answers is told before torch loads
    from cli import summaries
    from cli.progress import RunProgress
    from flows import plans
    from trainlib.config import load_config
    from trainlib.overrides import parse_margin, parse_vary

    vary = dict(parse_vary(item) for item in args.vary)
    margins = dict(parse_margin(item) for item in args.margin or [])
    plan = plans.compare(load_config(args.config, options.overrides(args)), vary, args.max_parallel, args.runner,
                         args.repeats, args.resplit, args.baseline, margins=margins)
    preflight.check([r.config for r in plan.runs])

    def start():
        from flows.compare import compare_flow

        return compare_flow(plan.config, vary, max_parallel=args.max_parallel, refresh=args.refresh,
                            runner=plan.runner, repeats=args.repeats, resplit=plan.resplit, baseline=plan.baseline,
                            margins=plan.margins)

    repeats = (f" x {'at most ' if plan.sequential else ''}{plan.repeats} repeats"
               f"{' in rounds' if plan.sequential else ''}{' on their own splits' if plan.resplit else ''}"
               if plan.repeats > 1 else "")
    return execute(args, f"{plan.config.name}: {len(plan.variants)} variants of {', '.join(vary)}{repeats}, "
                    f"baseline {plan.baseline}", start, summaries.comparison,
                    RunProgress(None if plan.sequential else len(plan.runs),
                                "variant runs" if plan.repeats > 1 else "variants"))


def _lr_find(args: argparse.Namespace) -> int:
    from cli import summaries
    from flows import plans
    from trainlib import lr_finder
    from trainlib.config import load_config

    updates, first, last = (lr_finder.UPDATES if args.updates is None else args.updates,
                            lr_finder.START if args.start is None else args.start,
                            lr_finder.END if args.end is None else args.end)
    cfg = plans.lr_find(load_config(args.config, options.overrides(args)), updates, first, last)
    preflight.check([cfg])

    def start():
        from flows.lr_find import lr_find_flow

        return lr_find_flow(cfg, updates, first, last, refresh=args.refresh)

    return execute(args, f"{cfg.name}: LR range test of {cfg.model.name} with {cfg.optimizer.name}, {first:g} to "
                    f"{last:g} over {updates} updates", start, summaries.lr_find)


def _study(args: argparse.Namespace) -> int:
    preflight.probe(args.runner)  # first: an address where nothing answers is told before torch loads
    from cli import summaries
    from cli.progress import StudyProgress
    from flows import plans

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    plan = plans.study(args.config, args.set or [], args.entries, only, args.repeats, args.quick, args.max_parallel,
                       args.runner)
    preflight.study(plan)

    def start():
        from flows.technique_study import study_flow

        return study_flow(args.config, args.set or [], only, args.repeats, args.quick, args.max_parallel,
                          plan.runner, args.entries)

    runs = sum(plans.trainings(c) for c in plan.claims)
    return execute(args, f"technique study{' (quick)' if plan.quick else ''}: {len(plan.claims)} claims, {runs} "
                    "trainings", start, summaries.technique_study, StudyProgress(len(plan.claims)))


def _variance(args: argparse.Namespace) -> int:
    preflight.probe(args.runner)
    from cli import summaries
    from cli.progress import RunProgress
    from flows import plans
    from trainlib.config import load_config
    from trainlib.variance import ALL, SOURCES

    sources = [s.strip() for s in args.sources.split(",") if s.strip()] if args.sources else [*SOURCES, ALL]
    plan = plans.variance(load_config(args.config, options.overrides(args)), sources, args.repeats,
                          args.max_parallel, args.runner)
    preflight.check([r.config for r in plan.runs])

    def start():
        from flows.variance import variance_flow

        return variance_flow(plan.config, sources, args.repeats, args.max_parallel, args.refresh, plan.runner)

    return execute(args, f"{plan.config.name}: sources of variance {', '.join(sources)} x {args.repeats} repeats "
                    f"({len(plan.runs)} trainings)", start, summaries.variance, RunProgress(len(plan.runs),
                                                                                          "trainings"))


def _rerun(args: argparse.Namespace) -> int:
    from cli import summaries
    from cli.progress import EpochProgress
    from flows.rerun import plan, run_of

    run_id = run_of(args.run_id)
    replay = plan(run_id, args.set or [], args.allow_data_change)  # bad input (exit 2) before anything starts

    def start():
        from flows.rerun import rerun_flow

        return rerun_flow(run_id, replay.config, replay.digest, replay.changes)

    return execute(args, f"rerun of {run_id} ({replay.original.kind}: {replay.config.name})", start,
                   summaries.rerun, EpochProgress(replay.config.training.epochs, "training"))


def _ensemble_settings(args: argparse.Namespace):
    """The ensemble's settings: an --ensemble file, with the flags given over it."""
    from trainlib.config import validate
    from trainlib.ensemble import EnsembleConfig
    from trainlib.overrides import parse_member, read_yaml

    raw = read_yaml(args.ensemble, "ensemble file") if args.ensemble else {}
    flags = {"method": args.method, "members": args.members, "vote": args.vote, "meta": args.meta,
             "folds": args.folds, "max_parallel": args.max_parallel,
             "configs": [parse_member(m) for m in args.member] if args.member else None}
    raw |= {k: v for k, v in flags.items() if v is not None}
    if "method" not in raw:
        raise TrainflowError("ensemble: give --method bagging|boosting|stacking|voting (or an --ensemble file)")
    return validate(raw, EnsembleConfig, "ensemble")


def _ensemble(args: argparse.Namespace) -> int:
    preflight.probe(args.runner)  # first: an address where nothing answers is told before torch loads
    from cli import summaries
    from cli.progress import RunProgress
    from flows import plans
    from trainlib.config import load_config

    plan = plans.ensemble(load_config(args.config, options.overrides(args)), _ensemble_settings(args), args.runner,
                          args.repeats, args.resplit)
    preflight.check([m.config for m in plan.members if m.config] or [plan.config],
                    registered=[m.uri for m in plan.members if m.uri])
    ensemble = plan.ensemble

    def start():
        from flows.ensemble import ensemble_pipeline

        return ensemble_pipeline(plan.config, ensemble, refresh=args.refresh, runner=plan.runner,
                                 repeats=plan.repeats, resplit=plan.resplit)

    repeats = f" x {plan.repeats} repeats" if plan.repeats > 1 else ""
    return execute(args, f"{plan.config.name}: {ensemble.method} ensemble of {ensemble.size}{repeats}", start,
                    summaries.ensemble, RunProgress(ensemble.size * plan.repeats, f"{ensemble.method} members"))


def _transfer(args: argparse.Namespace) -> int:
    from cli import summaries
    from cli.progress import EpochProgress
    from flows import plans
    from trainlib.config import anchored, load_config, override

    cfg = load_config(args.config, options.overrides(args))
    if args.demo:
        if args.source or args.strategy:
            raise TrainflowError("transfer --demo: it trains its own source and runs every strategy; leave out "
                                 "--source and --strategy")
        shots = args.shots or 10
        preflight.check([cfg])

        def demo():
            from flows.transfer import transfer_demo

            return transfer_demo(cfg, shots, refresh=args.refresh)

        return execute(args, f"transfer demo: digits 0-4 -> 5-9, {shots} shots per class", demo, summaries.demo)
    if not args.source:
        raise TrainflowError("transfer: give --source models:/name@alias | FILE | torchvision:resnet18 (or --demo)")
    source = anchored(args.source, Path.cwd())  # a path on the command line: against the current folder, as --set's
    changes = {"transfer.source": source} | ({"transfer.strategy": args.strategy} if args.strategy else {})
    cfg = plans.transfer(override(cfg, changes | ({"split.shots": args.shots} if args.shots else {})))
    preflight.check([cfg])

    def start():
        from flows.transfer import transfer_pipeline

        return transfer_pipeline(cfg, refresh=args.refresh)

    return execute(args, f"{cfg.name}: {cfg.transfer.strategy} from {args.source}", start, summaries.transfer,
                    EpochProgress(cfg.training.epochs, cfg.transfer.strategy))


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the flow commands to the `trainflow` parser's subcommands."""
    add = options.add
    run = sub.add_parser("run", help="train one config through the pipeline (default: cnn on the embedded digits)")
    tune = sub.add_parser("tune", help="search hyperparameters (grid, random, bayesian), retrain and register the best")
    tune.add_argument("--search", required=True, help="search file YAML (strategy, metric, budget, space)")
    compare = sub.add_parser("compare", help="train variants side by side on the same split and seed")
    compare.add_argument("--vary", action="append", required=True, metavar="KEY=V1,V2",
                         help="a config key and its values (repeat for a full grid of combinations)")
    add(compare, "--max-parallel", "--repeats", "--resplit", repeats={
        "type": str, "default": "1", "metavar": "N|auto[:MAX]",
        "help": "train every variant N times, repeat i with training.seed + i, the same seeds for every variant "
                "(paired): means, 95%% intervals and verdicts (default 1); auto[:MAX]: in rounds of 3, 5, 8, ... "
                "repeats until every variant's verdict on test_accuracy is decided, at most MAX (default 10), at "
                "levels that keep the error rate at 5%%"},
        resplit={"help": "repeat i is also split with split.seed + i: scored on another test split each time"})
    compare.add_argument("--margin", action="append", type=options.key_value, metavar="MEASURE=VALUE",
                         help="equivalence margin of a measure, e.g. test_accuracy=0.005 (repeatable; default by kind: "
                              "accuracy, F1 0.01, loss 0.02, epochs 1): `equivalent` when the 90%% interval of the "
                              "difference lies inside ±VALUE")
    compare.add_argument("--baseline", metavar="LABEL",
                         help="the variant the others are compared with, e.g. optimizer.name=sgd or sgd "
                              "(default the first)")
    ens = sub.add_parser("ensemble", help="combine several networks into one registered model")
    ens.add_argument("--method", help="bagging | boosting | stacking | voting")
    ens.add_argument("--members", type=options.positive, help="bagging: members (default 5); boosting: most rounds")
    ens.add_argument("--member", action="append", metavar="SPEC",
                     help="stacking, voting (repeat per member): 'key=value ...' overrides of the base config, a "
                          "config YAML, or (voting) a registered model models:/name@alias")
    ens.add_argument("--vote", help="voting: soft (average probabilities, default) | hard (count votes)")
    ens.add_argument("--meta", help="stacking: oof (meta-learner on k-fold predictions, default) | val")
    ens.add_argument("--folds", type=options.positive, help="stacking with --meta oof: k (default 5)")
    add(ens, "--max-parallel", "--repeats", "--resplit",
        max_parallel={"default": None, "help": "members trained at once (default 2)"},
        repeats={"help": "train the whole ensemble N times (new seeds each): the ensemble against its best and its "
                         "mean member with 95%% intervals and verdicts; repeat 0 is registered (default 1)"})
    ens.add_argument("--ensemble", metavar="F", help="ensemble file YAML (any of these settings; flags win)")
    for sp in (tune, compare, ens):
        add(sp, "--runner", runner={"help": f"where trials, variants or members run: {options.RUNNERS} (default "
                                            "thread: this process's threads; dask: a local Dask cluster)"})
    tr = sub.add_parser("transfer", help="start from a trained model: feature extraction, fine-tuning, or scratch")
    tr.add_argument("--source", help="models:/name@alias (or /version), a trainflow model file, torchvision:resnet18")
    tr.add_argument("--strategy", help="feature_extraction | finetune (default) | scratch")
    tr.add_argument("--shots", type=options.positive, help="few-shot: labeled train samples kept per class (demo: 10)")
    tr.add_argument("--demo", action="store_true", help="digits 0-4 -> digits 5-9: transfer against scratch")
    for sp, handler in ((run, _run), (tune, _tune), (compare, _compare), (ens, _ensemble), (tr, _transfer)):
        add(sp, "--config", "--set", "--name", "--no-register", "--refresh", "--json",
            config={"help": "pipeline config YAML (tune, compare: the base every trial changes)"})
        sp.set_defaults(handler=handler)
    lf = sub.add_parser("lr-find", help="the LR range test: sweep the learning rate on a fresh model, suggest one")
    add(lf, "--config", "--set", config={"help": "pipeline config YAML (its model, optimizer, batch size, "
                                                 "augmentation)"})
    lf.add_argument("--updates", type=options.positive, help="minibatches of the sweep (default 200)")
    lf.add_argument("--start", type=float, help="the sweep's first LR (default 1e-7)")
    lf.add_argument("--end", type=float, help="the sweep's last LR (default 10)")
    add(lf, "--refresh", "--json", "--name", name={"help": "the experiment its run goes to (the config's `name`)"})
    lf.set_defaults(handler=_lr_find, no_register=False)
    st = sub.add_parser("study", help="the technique study: every claim of configs/study tested with repeats, "
                        "one report")
    add(st, "--config", "--set", config={"help": "pipeline config YAML for entries that name no base"},
        set={"help": "override a config key in every entry (repeatable)"})
    add(st, "--repeats", repeats={"default": None, "help": "repeats of every variant (default: each entry's)"})
    st.add_argument("--quick", action="store_true", help="each entry's quick settings: fewer repeats and epochs")
    st.add_argument("--only", metavar="NAME,...", help="run only these entries (file names in configs/study)")
    st.add_argument("--entries", metavar="DIR", help="a folder of entries instead of configs/study")
    add(st, "--max-parallel", "--runner", "--json")
    st.set_defaults(handler=_study)
    va = sub.add_parser("variance", help="where a config's spread of test accuracy comes from: the split, initial "
                        "weights, batch order, augmentation, dropout, each moved alone")
    add(va, "--config", "--set", "--name", "--refresh", "--json", "--max-parallel", "--runner", "--repeats",
        repeats={"default": 5, "help": "trainings per source, repeat 0 shared (default 5; at least 3)"})
    va.add_argument("--sources", metavar="S,...", help="some of split, init, order, augment, dropout, all (every "
                                                       "seed at once); default all of them")
    va.set_defaults(handler=_variance, no_register=False)
    rr = sub.add_parser("rerun", help="replay a run from its recorded config in a new run; print how its metrics "
                        "differ (registers nothing unless --set register.enabled=true)")
    rr.add_argument("run_id", metavar="RUN_ID", help="an MLflow run of `trainflow run` or a compare variant, or a "
                    "registered version (models:/NAME@ALIAS or models:/NAME/VERSION): the run that logged it")
    add(rr, "--set", "--json", set={"help": "override a key of the recorded config (repeatable)"})
    rr.add_argument("--allow-data-change", action="store_true", help="train even when the data's digest differs "
                    "from the original run's (refused by default, exit 2)")
    rr.set_defaults(handler=_rerun, no_register=False)
