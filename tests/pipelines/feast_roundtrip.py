"""Run by the Feast environment's Python (not seqattn's), from tests/pipelines/test_export_feast.py:
``feast apply`` on an exported repository, then historical and (after ``feast materialize``) online
features through its FeatureService, printed as one JSON object. Imports feast, pandas and pyarrow only.

    python feast_roundtrip.py REPO SERVICE ENTITY TIMESTAMP DATA.parquet ROW [ROW ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq


def main() -> None:
    repo, service, entity, timestamp, data = sys.argv[1:6]
    rows = [int(r) for r in sys.argv[6:]]
    feast = Path(sys.executable).with_name("feast")
    subprocess.run([str(feast), "apply"], cwd=repo, check=True, capture_output=True, text=True)
    from feast import FeatureStore

    store = FeatureStore(repo_path=repo)
    fs = store.get_feature_service(service)
    table = pq.read_table(data, columns=[entity, timestamp]).to_pandas()
    picked = table.iloc[rows]
    entity_df = pd.DataFrame({entity: picked[entity].to_numpy(),
                              "event_timestamp": picked[timestamp].to_numpy() + pd.Timedelta(seconds=1)})
    historical = store.get_historical_features(entity_df=entity_df, features=fs).to_df()
    historical = historical.set_index(entity).loc[picked[entity].to_numpy()].reset_index()
    start, end = table[timestamp].min() - timedelta(days=1), table[timestamp].max() + timedelta(days=1)
    subprocess.run([str(feast), "materialize", start.isoformat(), end.isoformat()], cwd=repo, check=True,
                   capture_output=True, text=True)
    online = store.get_online_features(features=fs, entity_rows=[{entity: int(k)} for k in picked[entity]]).to_dict()

    def plain(frame: dict[str, list[object]]) -> dict[str, list[object]]:
        return {k: [v.item() if hasattr(v, "item") else v for v in vs] for k, vs in frame.items()}

    hist = {c: historical[c].tolist() for c in historical.columns if c not in ("event_timestamp",)}
    print(json.dumps({"historical": plain(hist), "online": plain(online),
                      "feature_services": [s.name for s in store.list_feature_services()],
                      "on_demand": [v.name for v in store.list_on_demand_feature_views()]}, default=str))


if __name__ == "__main__":
    main()
