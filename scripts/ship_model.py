"""Ship a training run as an embedded pipeline: python scripts/ship_model.py runs/RUN shapeworld-tiny

Copies RUN/pipeline (the EMA weights the trainer exported) to streamgen/pipelines/NAME (package data: wheels carry
it), the run's config, loss log and eval log to streamgen/pipelines/NAME/training/ (the provenance the README
reports), and RUN/checkpoint/state.pt to
checkpoints/NAME/state.pt, overwriting the previous one, so a later session continues the same run with
``streamgen train --config ... --resume checkpoints/NAME/state.pt``.
"""

import argparse
import json
import shutil
from pathlib import Path

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
for name in ("config.json", "log.jsonl", "eval.jsonl"):
    if (args.run / name).is_file():
        shutil.copyfile(args.run / name, tmp / "training" / name)
shutil.rmtree(dest, ignore_errors=True)
tmp.rename(dest)

state = args.run / "checkpoint" / "state.pt"
if state.is_file():
    (ROOT / "checkpoints" / args.name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(state, ROOT / "checkpoints" / args.name / "state.pt")

for path in sorted(p for p in [*dest.rglob("*"), ROOT / "checkpoints" / args.name / "state.pt"] if p.is_file()):
    print(f"{path.stat().st_size:>10,}  {path.relative_to(ROOT)}")
