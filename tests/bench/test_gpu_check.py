"""bench.gpu_check on this host's device (the CPU here): one seed, one line of checks."""

import re
import sys

import pytest

from bench import gpu_check


@pytest.mark.slow
def test_one_seed_prints_its_device_and_a_line_of_checks(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_check", "--label", "here", "0"])
    gpu_check.main()
    out = capsys.readouterr().out
    assert out.startswith("device cpu") or out.startswith("device cuda")
    line, = (s for s in out.splitlines() if s.startswith("RESULT"))
    m = re.fullmatch(r"RESULT here seed=0 s=[\d.]+ auc=(0\.\d{4}) one_dup=(True|False) relevant_kept=(True|False) "
                     r"crosses_ok=(True|False) missing=\[.*\]", line)
    assert m and 0.7 < float(m.group(1)) < 1
