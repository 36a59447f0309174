"""The GPU run kit's preflight runs on this CPU as a dry run, so the kit cannot rot between GPU loans."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_kit_dry_run_passes_its_preflight_and_skips_every_gpu_step(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_speed.sh"), "--dry-run", "--num-processes", "2"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] and summary["steps"]["preflight"]["ok"]
    assert summary["steps"]["parity"] == summary["steps"]["speed"] == {"skipped": "dry run (no GPU steps)"}
    assert summary["processes"] == 2 and summary["steps"]["distributed"] == {"skipped": "dry run (no GPU steps)"}
    preflight = json.loads((tmp_path / "preflight.json").read_text())
    assert all(found["ok"] for found in preflight["imports"].values()), preflight["imports"]
    assert {"diffusers", "importlib_metadata", "streamgen.bench.speed"} <= set(preflight["imports"])


def test_the_speed_script_of_the_docs_is_the_kit():
    assert "gpu/run.sh" in (REPO / "scripts" / "gpu_speed.sh").read_text()
