"""The demo soak script (issue 16's acceptance run) still runs: a few seconds of it, in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_soak_script_reports_gaps_refusals_and_memory():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo_soak.py"), "--seconds", "4", "--warm-up", "2"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert set(report["worst_gap_chunks"]) == {"user-0", "user-1", "user-2"}
    assert all(rate > 0 for rate in report["frames_shown_per_s"].values())
    assert report["hostile"]["refused_start"] >= 1  # the 1 MB prompt never reached the tokenizer
    assert report["hostile"]["refused_switch"] == report["hostile"]["switches"] >= 1
    assert report["memory_after"]["rss"] > 0 and report["memory_before"]["rss"] > 0
