"""The command line's own surface, in process: the command list, each command's help, `trainflow config`, and
what a malformed --set says. Nothing here starts a flow."""

import pytest
import yaml

from cli.main import EXAMPLES, main, parser
from trainlib.config import load_config, reference
from trainlib.errors import TrainflowError


def test_trainflow_alone_lists_every_command_with_one_line(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(EXAMPLES)
    assert all(len(line.split()) > 1 for line in out.splitlines() if line.startswith("  "))  # each has its help


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_each_commands_help_shows_two_examples_that_parse(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(example in out for example in EXAMPLES[command]) and len(EXAMPLES[command]) == 2
    for example in EXAMPLES[command]:  # every example is a valid command line
        words = example.split("&&")[0].split("||")[0].split()[1:]
        assert parser().parse_args(words).command == command
    if "--set" in out:
        assert "trainflow config --keys" in out


def test_a_malformed_set_says_what_it_expects(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "--set", "optimizer.lr", "0.01"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --set: expected KEY=VALUE as one word, e.g. --set optimizer.lr=0.01 "
                          "(got 'optimizer.lr')") and len(err.splitlines()) == 1


def test_config_prints_the_effective_config_that_loads_back(capsys, tmp_path):
    assert main(["config", "--config", "configs/tabular-csv.yaml", "--set", "training.epochs=3"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    again = load_config(printed)
    assert again == load_config("configs/tabular-csv.yaml", ["training.epochs=3"]) and again.training.epochs == 3
    assert yaml.safe_load(printed.read_text())["data"]["path"].endswith("configs/data/iris.csv")


def test_config_keys_lists_every_key_with_its_default_and_meaning(capsys):
    assert main(["config", "--keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = reference()
    assert len(lines) == len(keys)
    for line, (key, default, text) in zip(lines, keys, strict=True):
        assert line.split()[0] == key and line.rstrip().endswith(text.strip())
        assert line.split()[1] == ("null" if default is None else str(default).split()[0])


def test_config_takes_name_as_run_does(capsys):
    assert main(["config", "--name", "wine-mlp", "--set", "name=ignored"]) == 0  # the flag wins, as in run
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "wine-mlp"
    assert parser().parse_args(["run", "--name", "wine-mlp"]).name == "wine-mlp"


def test_status_without_a_stack_says_so_exits_0_and_names_where_commands_record(capsys, monkeypatch):
    import os

    from deployments import stack
    from tasks import settings

    assert not any(r.pid for r in stack.status())  # this session's store has no stack up
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "no stack is running" in out and "trainflow up" in out
    assert f"MLFLOW_TRACKING_URI={os.environ['MLFLOW_TRACKING_URI']}" in out and str(settings.HOME) in out
    half = [stack.ServerState("prefect", 1, "http://127.0.0.1:4200/api", True, "p.log"),
            stack.ServerState("mlflow", None, None, False, "m.log")]
    monkeypatch.setattr(stack, "status", lambda: half)  # a stack half up is a failure to report
    assert main(["status"]) == 1
    assert "no stack is running" not in capsys.readouterr().out


def test_bad_config_in_config_command_is_one_error(capsys):
    assert main(["config", "--set", "training.epoch=3"]) == 2
    assert capsys.readouterr().err.strip() == "error: invalid config: training.epoch: unknown key (did you mean " \
                                              "'training.epochs'?)"


def test_a_command_reaches_its_temporary_api_before_prefect_or_mlflow_is_imported():
    """A command's Prefect API (the warm process's or a temporary one) must start before Prefect is imported (its
    settings are fixed at import) and boots while the heavy imports run: everything a command does up to execute,
    its plan and its pre-flight check (flows/preflight.py: the data read and split) included, stays clear of both."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from cli import main, training, models, ops, summaries, progress\n"
            "from flows import plans\n"
            "from trainlib.config import load_config\n"
            "from trainlib.ensemble import EnsembleConfig\n"
            "from trainlib.tuning import load_search\n"
            "from flows import preflight\n"
            "preflight.check([plans.run(load_config(None, []))])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_serve_picks_deployments_by_flow_and_name():
    from deployments import serve

    both = serve.deployments(names=["nightly"])  # a bare name: every deployment of that name
    assert sorted(f"{d.flow_name}/{d.name}" for d in both) == ["batch-predict/nightly", "training-pipeline/nightly"]
    one = serve.deployments(names=["training-pipeline/nightly"])
    assert [(d.flow_name, d.name) for d in one] == [("training-pipeline", "nightly")]
    with pytest.raises(TrainflowError, match="no deployment compare/nightly in .*; there are: training-pipeline/"):
        serve.deployments(names=["compare/nightly"])
