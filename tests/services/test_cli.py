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
    assert main(["export", str(tmp_path / "fs.json"), "--format", "torchrec", "--out", str(tmp_path / "tr.json")]) == 0
    cfg = json.loads((tmp_path / "tr.json").read_text())
    fs = json.loads((tmp_path / "fs.json").read_text())
    assert cfg["sparse"] == [f["name"] for f in fs["features"] if f["kind"] == "sparse"]
    assert len(cfg["tables"]) == len(cfg["sparse"]) + len(fs["crosses"])
    from pipelines.export import to_embedding_bag_configs
    cards = {n: 100 for n in cfg["sparse"]}
    assert [t.name for t in to_embedding_bag_configs(cfg, cards)] == [t["name"] for t in cfg["tables"]]
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
