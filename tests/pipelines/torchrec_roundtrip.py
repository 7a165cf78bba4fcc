"""Run in a fresh Python process (``python -I``) by tests/pipelines/test_export_torchrec.py: load a
TorchRec export with nothing but its own ``seqattn_runtime.py``, torch, torchrec and pyarrow, encode
the reference rows of the dataset from their raw values and predict them. Prints one JSON object:
per KJT key how many rows got the reference ids, the largest prediction difference, the tables,
and which seqattn modules were imported (there must be none).

    python -I torchrec_roundtrip.py EXPORT_DIR DATA.parquet
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq


def main() -> None:
    folder, data = sys.argv[1], sys.argv[2]
    sys.path.insert(0, folder)
    import seqattn_runtime as rt

    export = rt.load_export(folder)
    reference = pq.read_table(f"{folder}/reference.parquet")
    rows = pq.read_table(data).take(reference.column("row"))
    same = {}
    for key, (values, lengths) in export.ids(rows).items():
        got = np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []
        want = reference.column(f"ids.{key}").to_pylist()
        same[key] = int(sum(list(g) == w for g, w in zip(got, want)))
    model = rt.load_model(export)
    probs = rt.predict(export, rows, model=model)
    ebc = export.embedding_bag_collection()
    out = {
        "rows": reference.num_rows, "same_ids": same,
        "max_abs_diff": float(np.abs(probs - reference.column("prediction").to_numpy()).max()),
        "labels_match": bool((rows.column(export.manifest["label"]).to_numpy()
                              == reference.column("label").to_numpy()).all()),
        "tables": [(t.name, t.num_embeddings, t.embedding_dim, t.pooling.name) for t in export.embedding_bag_configs()],
        "ebc_tables": sorted(ebc.embedding_bags.keys()),
        "seqattn_modules": sorted(m for m in sys.modules
                                  if m.split(".")[0] in ("pipelines", "seqattn_core", "services")),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
