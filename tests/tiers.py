"""Test tiers: conftest.py gives every test exactly one of these markers (pyproject.toml registers them).

    unit     one process, no Prefect API, no MLflow store, no `trainflow` process: trainlib and pure helpers.
             `make check` runs them after ruff: the inner loop, in about a minute.
    slow     no Prefect API, MLflow store or trainflow process either, but seconds to minutes a test: the default
             config trained in full, processes (data-parallel ranks with gloo, a memory measure over 22,000 files, a
             study's worker that dies).
    flow     Prefect flows on the test API, the `trainflow` command as a process, MLflow on SQLite.
    servers  starts servers of its own: MLflow and Prefect servers, a worker, Chromium, Dask, PostgreSQL.

`make test` runs all four. A test's tier is its module's (MODULES) unless TESTS names it; a fixture in FIXTURES
raises it to at least that tier. Collection stops, saying why, on a test module missing from MODULES, a name in
TESTS that its module no longer defines, a module that runs `trainflow` (imports TRAINFLOW) listed below flow,
or a tier marker written in a test file (the tables here are the one place).
"""

from __future__ import annotations

import pytest

ORDER = ["unit", "slow", "flow", "servers"]

MODULES = {
    "unit": ["test_augment", "test_claims", "test_commands", "test_config", "test_config_properties", "test_configs",
             "test_docs", "test_engine", "test_ensemble", "test_evidence", "test_golden", "test_home", "test_lr_finder",
             "test_lineage", "test_measures",
             "test_models_optim", "test_own_data", "test_policies", "test_preflight", "test_purity", "test_recipe",
             "test_recipes",
             "test_report",
             "test_inference", "test_sequential", "test_variance", "test_run_logger", "test_scoring",
             "test_schedules", "test_signals", "test_sources", "test_split_normalize", "test_studies", "test_summaries",
             "test_transfer",
             "test_tuning"],
    "slow": ["test_calibration", "test_distributed", "test_memory"],
    "flow": ["test_aliases", "test_bad_inputs", "test_cli", "test_ensemble_flow", "test_flow", "test_lineage_flow",
             "test_local_api",
             "test_lr_find_flow", "test_model_commands", "test_predict", "test_registration",
             "test_resume", "test_rounds_flow", "test_seams", "test_security", "test_study_flow", "test_transfer_flow",
             "test_tuning_flow", "test_warm"],
    "servers": ["test_faults", "test_operations", "test_processes", "test_scaleout", "test_serving", "test_store"],
}

TESTS = {  # tests whose tier is not their module's: file::function -> tier
    "test_recipe.py::test_default_config_learns_digits": "slow",  # the default config for all its epochs
    "test_configs.py::test_each_regime_leaves_the_default_cnn_room_below_perfect": "slow",  # likewise
    "test_recipes.py::test_compiled_training_learns_as_the_plain_one": "slow",  # inductor compiles C++ (10-25 s)
    "test_sources.py::test_a_streamed_folder_holds_at_most_200_bytes_per_file": "slow",  # 40,000 files, 2 processes
    "test_studies.py::test_a_trial_whose_process_died_fails_and_frees_its_place": "slow",  # processes that die
    "test_studies.py::test_a_trial_whose_processes_keep_dying_is_queued_again_twice_then_left_failed": "slow",
    "test_distributed.py::test_what_data_parallel_training_refuses": "unit",  # refused before any rank starts
    "test_resume.py::test_the_same_training_at_the_same_time_trains_in_its_own_workspace": "unit",  # file locks
    "test_resume.py::test_only_an_unexpected_end_leaves_a_checkpoint_to_continue_from": "unit",
    "test_security.py::test_redact_hides_only_passwords": "unit",
    "test_warm.py::test_the_fingerprint_follows_installs_not_files_beside_the_source": "unit",
    "test_security.py::test_checkpoints_load_only_with_weights_only": "unit",  # reads the sources
    "test_security.py::test_yaml_loads_only_with_safe_load": "unit",
    "test_cli.py::test_ui_serves_the_local_store": "servers",  # `trainflow ui`: an MLflow server
    "test_docs.py::test_the_quickstart_runs_as_written": "servers",  # make run, trainflow ui
    "test_docs.py::test_your_own_data_runs_as_written": "flow",  # three trainflow runs
    "test_scaleout.py::test_a_bad_or_unreachable_runner_is_one_message": "flow",  # refused before any cluster
    "test_scaleout.py::test_a_bad_postgres_url_is_one_message_and_starts_nothing": "flow",
    "test_store.py::test_bad_input_and_looking_around_leave_no_store": "flow",  # trainflow processes, no server
    "test_store.py::test_a_full_disk_is_one_line_leaves_the_stores_whole_and_the_next_run_after_freeing_succeeds":
        "flow",  # two trainflow processes on a small disk, no server
}

FIXTURES = {"prefect_api": "flow", "postgres": "servers"}  # what a fixture needs at least


def _module_tiers() -> dict[str, str]:
    return {module: tier for tier, modules in MODULES.items() for module in modules}


def tier(item: pytest.Item, module_tiers: dict[str, str]) -> str:
    """The one tier of a collected test."""
    module, key = item.path.stem, f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
    if module not in module_tiers:
        raise pytest.UsageError(f"{item.path.name}: give the module a tier in tests/tiers.py (MODULES)")
    if module_tiers[module] in ("unit", "slow") and hasattr(item.module, "TRAINFLOW"):
        raise pytest.UsageError(f"{item.path.name} runs the trainflow command: its tier is flow or servers")
    stale = [name for name in TESTS if name.startswith(f"{item.path.name}::")
             and not hasattr(item.module, name.split("::")[1])]
    if stale:
        raise pytest.UsageError(f"tests/tiers.py TESTS names tests that {item.path.name} does not define: {stale}")
    if written := [m.name for m in item.iter_markers() if m.name in ORDER]:
        raise pytest.UsageError(f"{item.nodeid}: marked {written} in the test file; tiers live in tests/tiers.py")
    chosen = TESTS.get(key, module_tiers[module])
    for fixture in item.fixturenames:
        needed = FIXTURES.get(fixture, "unit")
        if ORDER.index(needed) > ORDER.index(chosen):
            chosen = needed
    return chosen


def assign(items: list[pytest.Item]) -> None:
    """Mark every test with its tier, and order the files heaviest tier first (a file's tests stay together): `make
    test`'s two lanes take files in this order, so the long ones start first and the short ones fill in at the end."""
    module_tiers = _module_tiers()
    weight: dict[str, int] = {}
    for item in items:
        chosen = tier(item, module_tiers)
        item.add_marker(getattr(pytest.mark, chosen))
        weight[item.path.name] = max(weight.get(item.path.name, 0), ORDER.index(chosen))
    items.sort(key=lambda item: -weight[item.path.name])  # stable: each file's own order is kept
