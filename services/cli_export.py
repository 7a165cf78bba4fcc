"""``seqattn export``: a FeatureSet as a self-contained TorchRec folder or a Feast repository
(docs/export.md). Kept apart from :mod:`services.cli` so that each module stays small.

    seqattn export FS.json --format torchrec --out DIR
    seqattn export FS.json --format feast --out DIR --entity COLUMN --timestamp COLUMN [--source PARQUET]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.errors import SpecError


def cmd_export(args: argparse.Namespace) -> int:
    """A FeatureSet as a self-contained TorchRec folder or a Feast repository (docs/export.md). A set
    never published (``version`` null: ``select --out``, ``demo``) is exported as
    ``{name}-unpublished``, never as a made-up version (see :mod:`pipelines.export`)."""
    from pipelines.export import find_artifacts, release_name, torchrec_config, write_torchrec_export
    from pipelines.spec import FeatureSet

    path = Path(args.feature_set)
    try:
        fs = FeatureSet.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise SpecError("feature_set", f"file {args.feature_set!r} not found") from None
    except ValueError as exc:
        raise SpecError("feature_set", f"{args.feature_set!r} is not a valid FeatureSet: "
                                       f"{str(exc).splitlines()[0]}") from None
    artifacts = find_artifacts(path, Path(args.artifacts) if args.artifacts else None)
    what = f"version {fs.version}" if fs.version is not None else "never published: no version"
    if args.format == "torchrec":
        if not args.out:
            print(json.dumps(torchrec_config(fs, artifacts), indent=2))
            return 0
        manifest = write_torchrec_export(Path(args.out), fs, artifacts)
        model = "with the trained model" if manifest["weights"] else "tables and encoding only (no model weights)"
        print(f"wrote {args.out}: TorchRec export of {release_name(fs)} ({what}), {len(manifest['tables'])} tables, "
              f"{model}; load it with seqattn_runtime.py inside it")
        return 0
    from pipelines.export import feast_definition
    from pipelines.export_feast import write_feast_repository

    if not args.out:  # the FeatureService alone, over the views the repository defines
        print(feast_definition(fs))
        return 0
    for flag, value in (("--entity", args.entity), ("--timestamp", args.timestamp)):
        if not value:
            raise SpecError(flag, "is required with --format feast (the repository's folder, its key column and its "
                            "event-time column)")
    source = args.source or fs.spec.dataset.path
    written = write_feast_repository(Path(args.out), fs, artifacts, source, args.entity, args.timestamp)
    print(f"wrote {args.out}: Feast repository of {release_name(fs)} ({what}); feature service "
          f"{written['feature_service']!r} with {len(written['features'])} features and "
          f"{len(written['crosses'])} crosses; run `feast apply` in it")
    return 0
