"""Ship a training run as an embedded pipeline: python scripts/ship_model.py runs/RUN shapeworld-tiny

Copies RUN/pipeline (the EMA weights the trainer exported) to streamgen/pipelines/NAME (package data: wheels carry
it), the run's config, loss log and eval log to streamgen/pipelines/NAME/training/ (the provenance the README
reports), and the run's training state (RUN/checkpoint/state.safetensors, or a legacy state.pt) to checkpoints/NAME/,
replacing the previous one, so a later session continues the same run with
``streamgen train --config ... --resume checkpoints/NAME/state.safetensors`` (or ``state.pt``). A run without a
training state (one finished on another machine, whose optimizer state did not come back) ships none, and the
previous one is removed (it belongs to other weights): continue it with ``streamgen train --init
streamgen/pipelines/NAME``.
"""

import argparse
import json
import shutil
from pathlib import Path

from streamgen.train.checkpoint import LEGACY_STATE_FILE, STATE_FILE, find_state

ROOT = Path(__file__).resolve().parent.parent

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("run", type=Path, help="training output folder (holds pipeline/, checkpoint/, log.jsonl)")
parser.add_argument("name", help="pipeline name under streamgen/pipelines/ and checkpoints/")
parser.add_argument("--default-cache", help="cache preset the pipeline uses when a call names none")
args = parser.parse_args()

source = args.run / "pipeline"
if not (source / "model_index.json").is_file():
    raise SystemExit(f"{source}: no exported pipeline (the trainer writes one at every eval and at the end)")
dest = ROOT / "streamgen" / "pipelines" / args.name
tmp = dest.with_name(dest.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
shutil.copytree(source, tmp)
if args.default_cache:
    index = json.loads((tmp / "model_index.json").read_text())
    index["default_cache"] = args.default_cache
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
(tmp / "training").mkdir()
for name in ("config.json", "log.jsonl", "eval.jsonl", "phases.json"):
    if (args.run / name).is_file():
        shutil.copyfile(args.run / name, tmp / "training" / name)
shutil.rmtree(dest, ignore_errors=True)
tmp.rename(dest)

shipped = ROOT / "checkpoints" / args.name
state = find_state(args.run / "checkpoint")  # state.safetensors, or a legacy state.pt
for old in (STATE_FILE, LEGACY_STATE_FILE):  # at most one state file per checkpoint folder: the shipped weights' own
    (shipped / old).unlink(missing_ok=True)
if state is not None:
    shipped.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(state, shipped / state.name)

for path in sorted(p for p in [*dest.rglob("*"), *shipped.glob("state.*")] if p.is_file()):
    print(f"{path.stat().st_size:>10,}  {path.relative_to(ROOT)}")
