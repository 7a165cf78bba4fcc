"""Run the benchmarks and write docs/benchmarks.md (+ docs/img/*.png).

    python -m bench.run                  # every section, full size
    python -m bench.run --quick          # same code, fewer seeds / epochs / k values: a few minutes
    python -m bench.run --sections c     # one section; the others stay as they are in the report

Nothing is cached: every figure in a section comes from the run that wrote it. The sections that read
the sample data (``../shared/data``, or ``$SEQATTN_SAMPLE_DATA``) are skipped where it is missing, as
on a fresh clone: the report says so under the section's heading and keeps the figures of the run
before, and the other sections still run. Under ``CI=true`` a missing file is an error instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import sklearn  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench import datasets, feature_selection, lem, paper_table, pruning  # noqa: E402
from bench.datasets import FRAPPE, PAPER_FILES, REPO_ROOT  # noqa: E402

# Selector settings shared by both sections: the selector's defaults (30 epochs, batch 256, one
# hidden layer of 64, Adam 1e-3, warm-up 0.1), written out so the report states them; quick mode
# trains for fewer epochs.
ATTENTION_FULL = {"epochs": 30}
ATTENTION_QUICK = {"epochs": 10}


def _section_a(quick: bool, img_dir: Path, work: Path, log: Callable[[str], None]) -> str:
    cfg = (feature_selection.SelectionBench(frappe_ks=(1, 3), planted_ks=(2, 6), seeds=(0,), attention=ATTENTION_QUICK)
           if quick else feature_selection.SelectionBench(attention=ATTENTION_FULL))
    return feature_selection.run(cfg, img_dir, log)


def _config_b(quick: bool) -> paper_table.PaperBench:
    return (paper_table.PaperBench(ks=(50,), seeds=(0,), attention=ATTENTION_QUICK, mlp_epochs=100)
            if quick else paper_table.PaperBench(attention=ATTENTION_FULL))


def _section_b(quick: bool, img_dir: Path, work: Path, log: Callable[[str], None]) -> str:
    return paper_table.run(_config_b(quick), img_dir, log)


def _section_c(quick: bool, img_dir: Path, work: Path, log: Callable[[str], None]) -> str:
    cfg = (lem.LEMBench(seeds=(0,), planted_rows=30_000, planted_noise=4) if quick else lem.LEMBench())
    return lem.run(cfg, img_dir, work, log)


def _section_d(quick: bool, img_dir: Path, work: Path, log: Callable[[str], None]) -> str:
    from bench import ray_scaling

    # Quick mode: one size, with 1 and 2 workers, so that `make bench-quick` stays a few minutes long.
    cfg = ray_scaling.RayBench(sizes=(20_000,)) if quick else ray_scaling.RayBench()
    return ray_scaling.run(cfg, work, log)


def _section_e(quick: bool, img_dir: Path, work: Path, log: Callable[[str], None]) -> str:
    from bench import serving

    cfg = serving.ServingBench(seconds=5.0, repeats=1) if quick else serving.ServingBench()
    return serving.run(cfg, work, log)


def _section_f(quick: bool, img_dir: Path, work: Path, log: Callable[[str], None]) -> str:
    cfg = (pruning.PruningBench(seeds=(0,), blocks=(8,), epochs=2, planted_rows=30_000, planted_noise=4,
                                speed_batches=(1, 1024), heads_kept=(1, 4))
           if quick else pruning.PruningBench())
    return pruning.run(cfg, img_dir, work, log)


def _config_g(quick: bool):  # -> bench.field.FieldBench, imported only when section g is asked for
    from bench import field

    return (field.FieldBench(seeds=(0,), problems=("planted",), full_curve=False, planted_rows=8_000, planted_noise=5,
                             greedy_problems=("planted",), greedy_max_k=1, dim_problems=("planted",),
                             scale_candidates=(20, 80), scale_candidate_rows=2_000, scale_rows=(4_000, 8_000),
                             scale_large_rows=0, placement_probe_fields=0)
            if quick else field.FieldBench())


def _needs_g(quick: bool) -> list[str]:
    from bench import field

    return field.sample_data(_config_g(quick))


def _section_g(quick: bool, img_dir: Path, work: Path, log: Callable[[str], None]) -> str:
    from bench import field_report

    return field_report.run(_config_g(quick), img_dir, work, log)


# One entry per report section: (quick, img_dir, work_dir, log) -> markdown.
SECTIONS: dict[str, Callable[[bool, Path, Path, Callable[[str], None]], str]] = {
    "a": _section_a, "b": _section_b, "c": _section_c,
    "d": _section_d, "e": _section_e, "f": _section_f, "g": _section_g,
}

# The sample files each section reads (relative to the sample-data folder), quick or not: a section
# whose files are missing is skipped, or under CI=true the run stops before it starts. Sections d
# and e read only generated data.
NEEDS: dict[str, Callable[[bool], Sequence[str]]] = {
    "a": lambda quick: [FRAPPE],  # feature_selection.frappe_problem
    "b": lambda quick: [PAPER_FILES[name] for name in _config_b(quick).datasets],
    "c": lambda quick: [FRAPPE],  # lem.make_problems: Frappe and planted
    "f": lambda quick: [FRAPPE],  # pruning runs lem.make_problems
    "g": _needs_g,  # Criteo and Frappe in full; quick mode runs only the planted problem
}


def missing_data(letters: Sequence[str], quick: bool) -> dict[str, list[str]]:
    """The sections among ``letters`` whose sample files are missing, with those files."""
    out = {letter: datasets.missing(NEEDS[letter](quick)) for letter in letters if letter in NEEDS}
    return {letter: files for letter, files in out.items() if files}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def header(threads: int) -> str:
    import torch

    return "\n".join([
        "# Benchmarks",
        "",
        "Each section says which command generated it and when; every number in a section comes from that "
        "run except those labelled *published*. `make bench` regenerates them all.",
        "",
        f"- Machine: {os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.machine()}",
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"scikit-learn {sklearn.__version__}",
        f"- Threads: every method runs with {threads} BLAS/torch thread(s), so the timings compare like with like; "
        "the machine is shared with other jobs, so absolute times are noisy and the ratios measured within one run "
        "are what matters.",
        "",
    ])


SECTION = re.compile(r"^## ([a-z])\. ", re.MULTILINE)


def split_sections(text: str) -> dict[str, str]:
    """The report's sections by letter (``## a. ...`` up to the next ``## x. ``)."""
    starts = [(m.group(1), m.start()) for m in SECTION.finditer(text)]
    return {letter: text[pos:(starts[i + 1][1] if i + 1 < len(starts) else len(text))].rstrip() + "\n"
            for i, (letter, pos) in enumerate(starts)}


SKIPPED = re.compile(r"\A\*Skipped by `[^\n]*\n+")


def skipped(previous: str | None, letter: str, command: str, files: Sequence[str]) -> str:
    """A section not run for want of sample data: its previous text (if the report had one) with a
    line under the heading that says what was missing, in place of an earlier such line; the figures
    below stay from the run that made them (its own *Generated by* line dates them)."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title, _, body = (previous or f"## {letter}. Skipped\n").partition("\n")
    body = SKIPPED.sub("", body.lstrip("\n"))
    earlier = " What follows is from the earlier run stamped below." if body.startswith("*Generated by `") else ""
    note = (f"*Skipped by `{command}` on {now}: needs {', '.join(datasets.describe(f) for f in files)} "
            f"(the sample data, read in place; CI has it).{earlier}*")
    return f"{title}\n\n{note}\n" + (f"\n{body}" if body else "")


def stamp(section: str, command: str, seconds: float) -> str:
    """Put the generating command and date under the section's heading."""
    title, _, body = section.partition("\n")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{title}\n\n*Generated by `{command}` on {now} ({seconds / 60:.1f} min).*\n{body}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds, epochs and k values")
    parser.add_argument("--sections", default="".join(SECTIONS),
                        help=f"which sections to run, e.g. 'c' (default: all of {''.join(SECTIONS)}); the others "
                             "are kept as they stand in the report")
    parser.add_argument("--threads", type=int, default=1, help="BLAS and torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown section(s) {', '.join(unknown)}; choose from {''.join(SECTIONS)}")

    letters = sorted(set(args.sections))
    missing = missing_data(letters, args.quick)
    if missing and datasets.in_ci():
        for letter, files in missing.items():
            print(f"error: section {letter} needs {', '.join(datasets.describe(f) for f in files)} (the sample "
                  f"data), which {'is' if len(files) == 1 else 'are'} missing", file=sys.stderr)
        print(f"error: under CI=true the sample data must be there (set {datasets.SAMPLE_DATA_ENV} to its folder); "
              "nothing was run", file=sys.stderr)
        return 1

    import torch

    torch.set_num_threads(args.threads)
    img_dir = args.out.parent / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    command = "python -m bench.run" + (" --quick" if args.quick else "")
    with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory(prefix="seqattn-bench-") as work:
        for letter in letters:
            t0 = time.perf_counter()
            text = None if letter in missing else SECTIONS[letter](args.quick, img_dir, Path(work), log)
            # Re-read the report now, not at the start: a section written meanwhile by another run stays.
            sections = split_sections(args.out.read_text()) if args.out.exists() else {}
            if text is None:
                sections[letter] = skipped(sections.get(letter), letter, f"{command} --sections {letter}",
                                           missing[letter])
            else:
                sections[letter] = stamp(text, f"{command} --sections {letter}", time.perf_counter() - t0)
            # Written after every section, so a long run that is stopped keeps what it finished.
            args.out.write_text(header(args.threads) + "\n" + "\n".join(sections[k] for k in sorted(sections)))
            if text is None:
                log(f"section {letter} skipped: needs "
                    f"{', '.join(datasets.describe(f) for f in missing[letter])} (the sample data)")
            else:
                log(f"section {letter} written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
