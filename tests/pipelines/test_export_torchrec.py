"""The TorchRec export as a user takes it: ``seqattn select --out`` then ``seqattn export --format
torchrec``, and a fresh process that imports nothing of seqattn builds the model from the folder,
encodes the validation rows' raw values and gets the training ids and predictions back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.export import find_artifacts, to_embedding_bag_configs
from pipelines.export_runtime import cross_ids as runtime_cross_ids
from pipelines.synth import write_synth
from seqattn_core.crosses import cross_ids
from services.cli import main

pytestmark = pytest.mark.slow

ROUNDTRIP = Path(__file__).with_name("torchrec_roundtrip.py")
SPARSE = ["tags", "low_0", "rel_1", "pair_a0", "pair_b0", "pair_a1", "pair_b1", "noise_00", "noise_01"]


def _job(tmp: Path, data: Path, name: str, **over: Any) -> Path:
    spec: dict[str, Any] = {
        "name": name, "dataset": {"path": str(data), "label": "label", "sparse": SPARSE,
                                  "dense": ["dense_0", "dense_noise_1"]},
        "selection": {"crosses": 2, "embedding_dims": [4, 8, 16]},
        "training": {"epochs": 1, "batch_size": 512, "embedding_dim": 8}}
    for k, v in over.items():
        spec[k] = {**spec.get(k, {}), **v}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synth(out, rows=12_000, seed=0, n_noise=3)
    return out / "data.parquet"


def _select_and_export(tmp: Path, planted: Path, name: str, **over: Any) -> tuple[Path, dict[str, Any]]:
    fs_json = tmp / name / "fs.json"
    assert main(["select", str(_job(tmp, planted, name, **over)), "--out", str(fs_json)]) == 0
    assert (tmp / name / "fs.artifacts" / "preprocessing.json").is_file()
    out = tmp / name / "export"
    assert main(["export", str(fs_json), "--format", "torchrec", "--out", str(out)]) == 0
    proc = subprocess.run([sys.executable, "-I", str(ROUNDTRIP), str(out), str(planted)], capture_output=True,
                          text=True, cwd=tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dcn(tmp_path_factory: pytest.TempPathFactory, planted: Path) -> tuple[Path, dict[str, Any]]:
    return _select_and_export(tmp_path_factory.mktemp("dcn"), planted, "ctr-dcn")


def test_a_fresh_process_gets_the_training_ids_and_predictions_from_the_folder_alone(dcn) -> None:
    out, seen = dcn
    manifest = json.loads((out / "manifest.json").read_text())
    assert seen["seqattn_modules"] == []  # nothing of seqattn was imported to get there
    assert seen["rows"] == 1024 and seen["labels_match"]
    assert seen["same_ids"] == {k: 1024 for k in manifest["kjt_keys"]}
    assert seen["max_abs_diff"] < 1e-5
    crosses = [k for k in manifest["kjt_keys"] if "_X_" in k]
    assert len(crosses) == 2 and {"tags", "low_0", "rel_1"} <= set(manifest["kjt_keys"])


def test_the_manifest_has_every_table_with_rows_widths_pooling_and_the_preprocessing(dcn) -> None:
    out, seen = dcn
    manifest = json.loads((out / "manifest.json").read_text())
    tables = {t["feature_names"][0]: t for t in manifest["tables"]}
    assert all(isinstance(t["num_embeddings"], int) and t["num_embeddings"] > 1 for t in tables.values())
    assert tables["tags"]["pooling"] == "MEAN" and tables["low_0"]["pooling"] == "SUM"
    assert len({t["embedding_dim"] for t in tables.values()}) > 1  # mixed widths: DLRM could not take them
    vocab = pq.read_table(out / next(s["vocabulary"] for s in manifest["sparse"] if s["name"] == "low_0"))
    assert sorted(vocab.column("value").to_pylist()) == ["android", "ios", "web"]
    assert tables["low_0"]["num_embeddings"] == vocab.num_rows + 1
    counts = vocab.column("count").to_pylist()
    assert counts == sorted(counts, reverse=True)  # ids by descending train frequency
    assert manifest["dense"]["names"] == ["dense_0", "dense_noise_1"] and manifest["dense"]["std"][1] > 10
    assert manifest["label"] == "label" and manifest["feature_set"]["version"] is None
    assert manifest["feature_set"]["published"] is False
    for c in manifest["crosses"]:
        assert (c["card_a"], c["card_b"]) == tuple(tables[f]["num_embeddings"] for f in c["features"])
        assert tables[c["name"]]["num_embeddings"] == c["buckets"]
    configs = to_embedding_bag_configs(manifest)
    assert [(c.name, c.num_embeddings) for c in configs] == [(t["name"], t["num_embeddings"])
                                                             for t in manifest["tables"]]
    assert sorted(seen["ebc_tables"]) == sorted(t["name"] for t in manifest["tables"])


def test_autoint_with_a_pruned_tower_exports_its_effective_weights(tmp_path: Path, planted: Path) -> None:
    out, seen = _select_and_export(tmp_path, planted, "ctr-autoint", training={"interaction": "autoint"},
                                   pruning={"sparsity": 0.5, "block": 8, "cycles": 1},
                                   selection={"crosses": 1, "embedding_dims": [8]})
    assert seen["seqattn_modules"] == [] and seen["max_abs_diff"] < 1e-5
    assert set(seen["same_ids"].values()) == {1024}


def test_the_runtime_hash_is_the_training_hash() -> None:
    rng = np.random.default_rng(0)
    for card_a, card_b, buckets in [(11, 13, 143), (31, 21, 651), (3000, 2000, 65536), (7, 7, 48)]:
        a, b = rng.integers(0, card_a, 2000), rng.integers(0, card_b, 2000)
        assert runtime_cross_ids(a, b, card_a, card_b, buckets).tolist() == cross_ids(a, b, card_a, card_b,
                                                                                      buckets).tolist()


def test_export_without_artifacts_or_into_a_full_folder_is_a_one_line_error(dcn, tmp_path: Path, capsys) -> None:
    out, _ = dcn
    lone = tmp_path / "lone.json"
    lone.write_text((out / "featureset.json").read_text())
    assert find_artifacts(lone) is None
    assert main(["export", str(lone), "--format", "torchrec", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: artifacts:") and "vocabularies" in err and "Traceback" not in err
    fs_json = out.parent / "fs.json"
    assert main(["export", str(fs_json), "--format", "torchrec", "--out", str(out)]) == 2
    assert "error: --out:" in capsys.readouterr().err
    assert main(["export", str(fs_json), "--format", "feast", "--out", str(tmp_path / "f")]) == 2
    assert "error: --entity:" in capsys.readouterr().err
