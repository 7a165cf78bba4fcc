"""The seqattn CLI: bad input gets one line naming the field and exit code 2; export round trip."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from services.cli import main


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    t = pa.table({"label": rng.integers(0, 2, n), "price": rng.normal(size=n), "user": rng.integers(0, 5, n),
                  "item": rng.integers(0, 7, n)})
    path = tmp_path / "d.parquet"
    pq.write_table(t, path)
    return path


def _run(tmp_path, spec, capsys):
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    code = main(["select", str(p)])
    return code, capsys.readouterr().err.strip().splitlines()[-1]  # the last line is the verdict


def _spec(path, **over):
    spec = {"name": "t", "dataset": {"path": str(path), "label": "label"}, "training": {"epochs": 1}}
    for k, v in over.items():
        spec[k] = {**spec.get(k, {}), **v}
    return spec


@pytest.mark.parametrize("over, field", [
    ({"dataset": {"label": "click"}}, "dataset.label"),
    ({"dataset": {"sparse": ["user", "nope"]}}, "dataset.sparse"),
    ({"selection": {"features": 50}}, "selection.features"),
    ({"selection": {"crosses": 5}}, "selection.crosses"),
    ({"selection": {"embedding_dims": [4, 6]}}, "selection.embedding_dims"),
    ({"dataset": {"path": "/no/such/dir"}}, "dataset.path"),
    ({"training": {"epoch": 3}}, "training.epoch"),
])
def test_bad_specs_exit_2_naming_the_field(tmp_path, table, capsys, over, field):
    code, err = _run(tmp_path, _spec(table, **over), capsys)
    assert code == 2
    assert err.startswith(f"error: {field}") and "Traceback" not in err


def test_label_must_be_binary_and_dense_must_have_no_nans(tmp_path, capsys):
    n = 50
    pq.write_table(pa.table({"label": np.arange(n) % 3, "x": np.ones(n)}), tmp_path / "a.parquet")
    code, err = _run(tmp_path, _spec(tmp_path / "a.parquet"), capsys)
    assert code == 2 and "dataset.label" in err
    x = np.ones(n)
    x[3] = np.nan
    pq.write_table(pa.table({"label": np.arange(n) % 2, "x": x, "u": np.arange(n) % 4}), tmp_path / "b.parquet")
    code, err = _run(tmp_path, _spec(tmp_path / "b.parquet"), capsys)
    assert code == 2 and err.startswith("error: dataset.dense") and "'x'" in err


def test_empty_table_and_budget_too_small(tmp_path, capsys):
    pq.write_table(pa.table({"label": pa.array([], pa.int64()), "u": pa.array([], pa.int64())}), tmp_path / "e.parquet")
    code, err = _run(tmp_path, _spec(tmp_path / "e.parquet"), capsys)
    assert code == 2 and "dataset.path" in err
    n = 100
    pq.write_table(pa.table({"label": np.arange(n) % 2, "u": np.arange(n) % 50}), tmp_path / "s.parquet")
    code, err = _run(tmp_path, _spec(tmp_path / "s.parquet", constraints={"max_embedding_mb": 0.0001}), capsys)
    assert code == 2 and err.startswith("error: constraints.max_embedding_mb") and "too small" in err


@pytest.mark.slow
def test_synth_select_export_round_trip(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "d"), "--rows", "8000", "--seed", "1"]) == 0
    spec = {"name": "rt", "dataset": {"path": str(tmp_path / "d"), "label": "label"},
            "selection": {"features": 5, "crosses": 1}, "training": {"epochs": 1, "batch_size": 512},
            "constraints": {"max_inference_ms": 10_000}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert main(["select", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "fs.json")]) == 0
    out, err = capsys.readouterr()
    assert "prescreen" in err  # the pre-screen's bar (steps only, no loss) and then the training bars
    assert "latency budget 10000 ms:" in out and "nothing removed" in out
    assert (tmp_path / "fs.artifacts" / "preprocessing.json").is_file()  # where `seqattn export` finds them
    assert main(["export", str(tmp_path / "fs.json"), "--format", "torchrec", "--out", str(tmp_path / "tr")]) == 0
    cfg = json.loads((tmp_path / "tr" / "manifest.json").read_text())
    fs = json.loads((tmp_path / "fs.json").read_text())
    sparse = [f["name"] for f in fs["features"] if f["kind"] == "sparse"]
    assert len(cfg["tables"]) == len(sparse) + len(fs["crosses"])
    from pipelines.export import to_embedding_bag_configs
    assert [t.name for t in to_embedding_bag_configs(cfg)] == [t["name"] for t in cfg["tables"]]
    assert all(t["num_embeddings"] > 1 for t in cfg["tables"])
    assert main(["export", str(tmp_path / "nope.json")]) == 2


def test_serve_refuses_a_public_address_without_an_api_key(monkeypatch, capsys):
    monkeypatch.delenv("SEQATTN_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --host: '0.0.0.0' is not a loopback address")


def test_serve_names_a_bad_setting(monkeypatch, capsys):
    monkeypatch.setenv("SEQATTN_JOB_CONCURRENCY", "many")
    assert main(["serve", "--port", "1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: SEQATTN_JOB_CONCURRENCY: ")


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "99999"], "argument --port: must be from 1 to 65535, got 99999"),
    (["serve", "--port", "http"], "argument --port: must be an integer, got 'http'"),
    (["synth", "--out", "x", "--rows", "-5"], "argument --rows: must be at least 1, got -5"),
    (["demo", "--rows", "0"], "argument --rows: must be at least 1, got 0"),
])
def test_out_of_range_numbers_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error: before any server or file exists
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().endswith(message)


# --- synth --days: daily partitions a schedule reads as written --------------------------------


def test_synth_days_writes_the_partitions_the_jobspec_doc_uses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the doc's command, relative paths and all
    assert main(["synth", "--out", "data/daily", "--days", "3", "--rows", "20000"]) == 0
    out = capsys.readouterr().out
    days = sorted(p.name for p in (tmp_path / "data/daily").iterdir() if p.is_dir())
    assert days == ["day=2026-01-01", "day=2026-01-02", "day=2026-01-03"]
    assert [pq.read_metadata(tmp_path / "data/daily" / d / "part.parquet").num_rows for d in days] == [20_000] * 3
    truth = json.loads((tmp_path / "data/daily/truth.json").read_text())
    assert truth["drift_day"] is None and truth["after"] is None  # no drift unless asked
    assert "3 daily partition(s) of 20,000 rows (60,000 in all)" in out


def test_synth_drift_day_and_start(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--days", "3", "--rows", "50", "--drift-day", "1",
                 "--start", "2025-12-31", "--noise", "3"]) == 0
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["days"] == ["2025-12-31", "2026-01-01", "2026-01-02"] and truth["drift_date"] == "2026-01-01"
    assert "drift from day=2026-01-01" in capsys.readouterr().out


def test_synth_warns_about_partitions_it_did_not_write(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--days", "3", "--rows", "20", "--noise", "0"]) == 0
    capsys.readouterr()
    assert main(["synth", "--out", str(tmp_path), "--days", "2", "--rows", "20", "--noise", "0"]) == 0
    assert capsys.readouterr().err.strip().startswith("warning: --out: ")


@pytest.mark.parametrize("argv, message", [
    (["--drift-day", "1"], "error: --drift-day: needs --days"),
    (["--start", "2026-02-01"], "error: --start: needs --days"),
    (["--days", "3", "--drift-day", "3"], "error: --drift-day: must be less than --days (3)"),
    (["--days", "3", "--drift-day", "1", "--noise", "2"], "error: --noise: the drift makes noise_02 relevant"),
    (["--days", "3", "--start", "9999-12-30"], "error: --start: 9999-12-30 + 3 days passes the last date"),
])
def test_synth_bad_combinations_exit_2_naming_the_flag(tmp_path, capsys, argv, message):
    assert main(["synth", "--out", str(tmp_path / "d"), "--rows", "10", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)
    assert not (tmp_path / "d").exists()


def test_synth_out_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["synth", "--out", str(tmp_path / "f"), "--rows", "10"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --out: ")


@pytest.mark.slow
def test_synth_days_then_pipeline_run_publishes_a_version(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--out", "data/daily", "--days", "3", "--rows", "1500", "--noise", "3"]) == 0
    schedule = {"name": "daily", "cadence": {"cron": "0 3 * * *"},
                "window": {"path": "data/daily", "partition": "day", "size": 2},
                "job": {"name": "ctr", "dataset": {"path": "data/daily", "label": "label"},
                        "selection": {"features": 3}, "training": {"epochs": 1, "batch_size": 512}}}
    (tmp_path / "schedule.yaml").write_text(yaml.safe_dump(schedule))
    capsys.readouterr()
    assert main(["pipeline", "run", "schedule.yaml", "--home", "home"]) == 0
    out = capsys.readouterr().out
    assert "window day=2026-01-02..2026-01-03 (2 partitions) -> ctr version 1 promoted" in out
    from pipelines.registry import Registry
    assert [r.version for r in Registry(tmp_path / "home").versions("ctr")] == [1]


# --- --help: every argument described, with its default ------------------------------------------


def _subcommands(parser, prefix=()):
    """(command words, parser) for every leaf subcommand."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _subcommands(sub, (*prefix, name)) or [((*prefix, name), sub)]
    return found


def test_every_subcommand_help_describes_each_argument_and_its_default(capsys):
    from services.cli import build_parser

    commands = dict(_subcommands(build_parser()))
    assert {" ".join(c) for c in commands} == {"synth", "select", "export", "demo", "pipeline run", "serve"}
    for words, sub in commands.items():
        with pytest.raises(SystemExit) as exit_:
            main([*words, "--help"])
        assert exit_.value.code == 0
        text = "".join(capsys.readouterr().out.split())  # argparse wraps lines at spaces and hyphens
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{' '.join(words)} {action.dest}: no help"
            expanded = sub._get_formatter()._expand_help(action)
            assert "".join(expanded.split()) in text
            if action.option_strings and not action.required:
                assert "(default: " in expanded, f"{' '.join(words)} {action.option_strings[0]}: no default stated"


def test_serve_help_lists_every_setting_from_the_model(capsys):
    from services.selector_api.settings import Settings

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "environment variables" in text
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("  SEQATTN_")]
    assert listed == [f"SEQATTN_{name.upper()}" for name in Settings.model_fields]
    assert "SEQATTN_JOB_CONCURRENCY" in listed and "SEQATTN_HOME" in listed
    assert " ".join(text.split()).count("(default: 1)") >= 1  # job_concurrency's default, from the model


# --- serve: a taken port, the URLs once listening, missing data roots ----------------------------


def _clean_env(monkeypatch, tmp_path):
    for key in [k for k in __import__("os").environ if k.startswith("SEQATTN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SEQATTN_HOME", str(tmp_path / "home"))


def test_serve_on_a_taken_port_says_so_before_any_banner_and_exits_3(tmp_path, monkeypatch, capsys):
    import socket

    _clean_env(monkeypatch, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 3
    out, err = capsys.readouterr()
    assert out == ""  # no URL lines, no startup banner
    assert err.splitlines() == [f"error: --port: 127.0.0.1:{port} is already in use; stop what listens there "
                                "or pick another --port"]


def test_serve_prints_its_urls_once_listening_and_warns_about_missing_roots(tmp_path):
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import time

    import httpx
    from live_server import REPO, free_port

    present, missing = tmp_path / "data", tmp_path / "no-such-root"
    present.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQATTN_")}
    env.update({"SEQATTN_HOME": str(tmp_path / "home"), "SEQATTN_DATA_ROOTS": f"{present}{os.pathsep}{missing}",
                "SEQATTN_SCHEDULER_ENABLED": "false", "PYTHONWARNINGS": "ignore"})
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [stdout.put(line.rstrip("\n")) for line in proc.stdout], daemon=True).start()
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not lines or not lines[-1].startswith("  API"):  # the last URL line
            assert proc.poll() is None and time.monotonic() < deadline, lines
            try:
                lines.append(stdout.get(timeout=1.0))
            except queue.Empty:
                pass
        base = f"http://127.0.0.1:{port}"
        assert lines == [f"seqattn serve: listening on {base}", f"  dashboard  {base}/dashboard",
                         f"  API        {base}/v1/...  (docs: {base}/docs)"]
        # Printed once listening: both pages answer now.
        assert httpx.get(f"{base}/dashboard", timeout=10).status_code == 200
        assert httpx.get(f"{base}/docs", timeout=10).status_code == 200
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # our own child, by its pid
        err = proc.stderr.read()
        proc.wait(timeout=30)
        print(err)  # shown when the test fails
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: SEQATTN_DATA_ROOTS: {str(missing)!r} does not exist; no dataset can be read "
                        "under it"]


# --- export of a set that was never published ----------------------------------------------------


def _unpublished(tmp_path):
    from pipelines.spec import FeatureSet, JobSpec, SelectedFeature

    fs = FeatureSet(name="ctr", spec=JobSpec(name="ctr", dataset={"path": "d", "label": "y"}),
                    features=[SelectedFeature(name="user", kind="sparse", rank=1, score=0.5, embedding_dim=8)])
    path = tmp_path / "fs.json"
    path.write_text(fs.model_dump_json())  # what `seqattn select --out` writes: version null
    return path


def test_export_of_an_unpublished_set_makes_up_no_version(tmp_path, capsys):
    path = _unpublished(tmp_path)
    assert main(["export", str(path), "--format", "feast"]) == 0
    source = capsys.readouterr().out
    assert "name='ctr-unpublished'" in source and "ctr_unpublished = FeatureService(" in source
    assert "version 1" not in source and "-v1" not in source and "seqattn_version" not in source
    # Without the run's artifacts there are no ids to export: one line naming them, exit 2.
    assert main(["export", str(path), "--out", str(tmp_path / "tr")]) == 2
    assert capsys.readouterr().err.startswith("error: artifacts: feature set 'ctr-unpublished' has no preprocessing")


def test_serve_urls_for_a_wildcard_and_an_ipv6_host():
    import doctest

    import services.cli
    from services.cli import serve_urls

    assert serve_urls("0.0.0.0", 9000)[:2] == ["seqattn serve: listening on 0.0.0.0:9000 (every interface)",
                                             "  dashboard  http://127.0.0.1:9000/dashboard"]
    assert serve_urls("::1", 9000)[1] == "  dashboard  http://[::1]:9000/dashboard"
    assert doctest.testmod(services.cli).failed == 0


def test_summary_latency_line_names_what_was_removed():
    from pipelines.spec import FeatureSet, JobSpec, LatencyTrim, SelectedFeature
    from services.cli import _summary

    fs = FeatureSet(name="ctr", spec=JobSpec(name="ctr", dataset={"path": "d", "label": "y"}),
                    features=[SelectedFeature(name="user", kind="sparse", rank=1, score=0.5, embedding_dim=8)],
                    metrics={"val_auc": 0.7}, timings={"total_s": 1.0},
                    latency=LatencyTrim(budget_ms=5, ms_before=7.5, ms_after=4.25, removed_features=["item"],
                                        removed_crosses=[("a", "b")]))
    lines = _summary(fs).splitlines()  # metrics the set lacks are n/a (a None used to crash the summary)
    assert lines[2] == ("  val AUC 0.7000 (all features n/a); embeddings n/a MB (all features n/a MB); "
                        "inference n/a ms / 1,024 rows")
    assert "  latency budget 5 ms: 7.50 ms before, 4.25 ms after; removed item, a x b" in lines
    assert "latency" not in _summary(fs.model_copy(update={"latency": None}))
