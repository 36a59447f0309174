"""``streamgen erase --pipeline DIR --concept "red" [--concept "circle" ...] [--paraphrases FILE] [--anchors FILE]
--out DIR [--steps N] [--resume] [--fuse sum|closed-form]``: one LoRA per concept, then the erasure suite (each LoRA
alone and, for several concepts, all of them fused: deltas added, or by the closed form into ``OUT/<a>+<b>/``)
against the original model on the same seeds, written as ``report.json`` and ``report.md``; ``--gif DIR``: the
before/after GIF pair with every LoRA fused. ``--loras DIR DIR ...`` fuses LoRAs trained before instead of
training. ``streamgen.cli`` wires it with ``register_cli(subparsers)``; building the parser imports no torch. It lives
on the command side (beside the bench it runs): the erasure hooks themselves (:mod:`streamgen.erasure`) sit below the
pipeline.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

EVAL_SIZES = ("quick", "check", "small", "full", "none")


def register_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "erase", help="erase concepts (ANT): one LoRA per concept, fused, with a before/after report",
        description="Erase ShapeWorld concepts from a pipeline with ANT's trajectory-aware fine-tuning on states of "
                    "streaming rollouts (direct, after cut / smooth switches into the concept, deep in a stream): one "
                    "masked LoRA per concept in diffusers' layout, then the erasure suite (original vs erased, same "
                    "seeds) as report.json / report.md. Resumable (--resume).",
    )
    p.add_argument("--pipeline", help="pipeline folder, or a shipped one by name (default: the embedded model)")
    p.add_argument("--concept", action="append", metavar="CONCEPT",
                   help="a background, object colour or shape (red, circle, white, 'white background', "
                        "color:blue); repeat for several (one LoRA each, fused for the report)")
    p.add_argument("--loras", nargs="+", metavar="DIR", help="instead of --concept: fuse these LoRA folders written "
                   "by 'streamgen erase' (one concept each) into OUT/<a>+<b>/ by --fuse, then the report")
    p.add_argument("--fuse", choices=["sum", "closed-form"],
                   help="how several concepts' LoRAs are fused: MACE's closed-form refinement of the cross-attention "
                        "K/V, written as one LoRA folder OUT/<a>+<b>/ (each concept's training captions keep their own "
                        "LoRA's K/V, anchor captions the original's; the default for cross-attention K/V LoRAs), or "
                        "their deltas added (the default for LoRAs on other layers too: the report loads them one "
                        "after another)")
    p.add_argument("--fuse-preserve", type=float, help="closed form: weight of the anchors against one concept "
                   "(default 1)")
    p.add_argument("--fuse-ridge", type=float, help="closed form: ridge toward the original weights, relative to the "
                   "Gram's mean eigenvalue (default 1e-3)")
    p.add_argument("--fuse-prompts", type=int, help="closed form: training captions per concept and anchor "
                   "captions (default 64 each)")
    p.add_argument("--fuse-tokens", choices=["all", "prompt"], help="closed form: fit every text position the "
                   "cross-attention reads, padding included (default), or only the prompt's tokens")
    p.add_argument("--paraphrases", metavar="FILE", help="YAML/JSON {train: [...], heldout: [...]} caption templates "
                   "over the slots {c} {s} {m} {d} {b} {bp}; train ones fine-tune, held-out ones only evaluate")
    p.add_argument("--anchors", metavar="FILE", help="anchor prompts to preserve, one per line (default: captions "
                   "of random scenes without any of the concepts)")
    p.add_argument("--out", required=True, help="output folder: <attribute>-<value>/ per concept, report.json/.md")
    p.add_argument("--steps", type=int, help="optimizer steps per concept (default 200)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--rank", type=int, help="LoRA rank (default 4)")
    p.add_argument("--batch", type=int, help="states per step (default 2)")
    p.add_argument("--rollouts", type=int, help="rollout streams per kind (direct, cut, smooth, long; default 4)")
    p.add_argument("--chunks", type=int, help="concept chunks recorded per rollout (default 3)")
    p.add_argument("--switch-after", type=int, help="chunks of another scene before a rollout's switch (default 4)")
    p.add_argument("--long-chunks", type=int, help="chunks of the long rollout (default 16)")
    p.add_argument("--saliency-iterations", type=int, help="batches per saliency augmentation (default 4)")
    p.add_argument("--save-every", type=int, help="steps between state files (default 25)")
    p.add_argument("--switch-progress", type=float, help="fraction of the trajectory with the guidance direction "
                   "kept before it is reversed (default ANT's 7/50)")
    p.add_argument("--max-progress", type=float, help="train only on states drawn at trajectory progress <= this "
                   "(default 1: every sampler step; 0: the first step only)")
    p.add_argument("--eta", type=float, help="strength of the kept / reversed guidance direction (default 1)")
    p.add_argument("--anchors-per-step", type=int, help="anchor prompts preserved per step (default 1)")
    p.add_argument("--anchor-rollouts", type=int, help="anchor streams whose own states are preserved (default 0)")
    p.add_argument("--preserve-weight", type=float, help="weight of the anchors' own-trajectory term (default 1)")
    p.add_argument("--preserve-batch", type=int, help="anchor-trajectory states per step (default 2)")
    p.add_argument("--max-context", type=int, help="clean frames kept before a recorded chunk (default 6)")
    p.add_argument("--anchor-weight", type=float, help="weight of the anchor term (default 1)")
    p.add_argument("--unconditional", choices=["neutral", "empty"], help="the ∅ of the guidance direction: the "
                   "concept caption's neutral counterpart (default) or the empty prompt (ANT as published)")
    p.add_argument("--targets", choices=["all", "cross", "cross-kv"], help="Linear layers the LoRA adapts: every "
                   "attention and feed-forward one (default), the cross-attention, or its key/value projections")
    p.add_argument("--no-mask", action="store_true", help="train the whole LoRA (no saliency mask)")
    p.add_argument("--cache", help="cache preset of the rollouts and the evaluation (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", choices=EVAL_SIZES, default="quick",
                   help="size of the erasure suite run for the report (default quick; none: no report)")
    p.add_argument("--resume", action="store_true", help="continue the state files in --out (or skip finished "
                   "concepts) instead of refusing to overwrite them")
    p.add_argument("--gif", metavar="DIR", help="also write DIR/before.gif and DIR/after.gif (all LoRAs fused)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_erase)
    return p


def settings_from(args):
    from ...erasure.driver import EraseSettings

    given = {"steps": args.steps, "lr": args.lr, "rank": args.rank, "batch": args.batch,
             "rollouts_per_kind": args.rollouts, "switch_progress": args.switch_progress,
             "unconditional": args.unconditional, "cache": args.cache, "chunks": args.chunks,
             "switch_after": args.switch_after, "long_chunks": args.long_chunks,
             "saliency_iterations": args.saliency_iterations, "save_every": args.save_every,
             "max_progress": args.max_progress, "eta": args.eta, "anchors_per_step": args.anchors_per_step,
             "anchor_weight": args.anchor_weight, "anchor_rollouts": args.anchor_rollouts,
             "max_context": args.max_context, "preserve_weight": args.preserve_weight,
             "preserve_batch": args.preserve_batch, "targets": args.targets}
    given = {k: v for k, v in given.items() if v is not None}
    if args.rank is not None:
        given["alpha"] = float(args.rank)
    if args.no_mask:
        given["masked"] = False
    return EraseSettings(seed=args.seed, **given)


def eval_sizes(name: str):
    from dataclasses import replace

    from .harness import FULL, QUICK

    if name == "quick":
        return QUICK
    if name == "check":  # about half a minute per erased model on a CPU: for tuning
        return replace(FULL, single_videos=16, single_chunks=8, erasure_videos=4, erasure_chunks=4,
                       erasure_switch_before=2, erasure_long_videos=1, erasure_long_frames=48)
    if name == "small":  # minutes on a CPU: a quarter of the full suite
        return replace(FULL, single_videos=32, erasure_videos=6, erasure_chunks=6, erasure_long_videos=1)
    return FULL


def fusion_config(args, seed: int):
    from ...erasure.fusion import FusionConfig

    given = {"preserve_weight": args.fuse_preserve, "ridge": args.fuse_ridge, "tokens": args.fuse_tokens}
    if args.fuse_prompts is not None:
        given.update(prompts_per_concept=args.fuse_prompts, anchors=args.fuse_prompts)
    return FusionConfig(seed=seed, **{k: v for k, v in given.items() if v is not None})


def default_fuse(folders) -> str:
    """``closed-form`` when every LoRA adapts only the cross-attention K/V (the projections of the text it refines),
    else ``sum``."""
    from ...erasure.driver import TARGET_SETS
    from ...erasure.lora import lora_modules

    patterns = TARGET_SETS["cross-kv"]
    modules = [m for folder in folders for m in lora_modules(folder)]
    return "closed-form" if modules and all(any(fnmatch.fnmatchcase(m, p) for p in patterns) for m in modules) \
        else "sum"


def cmd_erase(args) -> int:
    from ...erasure.concepts import load_anchors, load_paraphrases, parse_concept
    from ...erasure.driver import default_anchors, erase_concept
    from ...erasure.fusion import fuse_folders, read_concepts, save_fused
    from ...erasure.processes import processes
    from ...pipeline import load_pipeline
    from ...resources import find_pipeline

    if bool(args.concept) == bool(args.loras):
        raise ValueError("give the concepts to erase (--concept) or the LoRA folders to fuse (--loras), not both")
    if args.loras:
        if len(args.loras) < 2:
            raise ValueError("--loras: give at least two LoRA folders to fuse")
        concepts = [c for folder in args.loras for c in read_concepts(folder)]
        if args.resume:
            raise ValueError("--resume continues training; --loras only fuses")
    else:
        concepts = list(dict.fromkeys(parse_concept(c) for c in args.concept))
    fuse_config = fusion_config(args, args.seed)
    paraphrases = load_paraphrases(args.paraphrases)
    for concept in concepts:
        paraphrases.check_covers(concept)
    settings = settings_from(args)
    anchors = load_anchors(args.anchors) or default_anchors(concepts, paraphrases, settings.anchors, settings.seed)
    procs = processes(args.device)  # one, or a launched run's (torchrun / accelerate launch): they share training
    out = Path(args.out)
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(str(find_pipeline(args.pipeline)), args.device)
    if getattr(args, "threads", None) is None:
        from ...threads import use_default_threads

        use_default_threads(pipe)

    def log(message: str) -> None:
        if procs.main:
            print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    runs = {}
    folders = [Path(f) for f in args.loras] if args.loras else [out / c.name for c in concepts]
    for concept in concepts if not args.loras else []:
        others = [c for c in concepts if c != concept]
        runs[concept.name] = erase_concept(pipe, concept, others, paraphrases, anchors, settings, out,
                                           resume=args.resume, progress=not args.no_progress and procs.main,
                                           log=log, procs=procs)
        log(f"{concept.name}: LoRA {runs[concept.name]['lora']}")
    if not procs.main:  # the main process fuses, evaluates and writes the report; the others wait for it
        procs.barrier()
        return 0
    report = {"command": "erase", "pipeline": str(args.pipeline or "shapeworld-tiny"),
              "concepts": [c.as_dict() for c in concepts], "settings": asdict(settings),
              "paraphrases": paraphrases.as_dict(), "anchors": anchors,
              "training": {k: {key: v[key] for key in v if key != "losses"} | {"losses_every_10": v["losses"][::10]}
                           for k, v in runs.items()},
              "training_seconds": round(time.perf_counter() - start, 1)}
    fuse = args.fuse or default_fuse(folders)
    report["fuse"] = fuse
    fused_folder = None
    if len(concepts) > 1 and (fuse != "sum" or args.loras):
        fused = fuse_folders(pipe, folders, fuse, paraphrases, fuse_config, anchors=load_anchors(args.anchors))
        fused_folder = save_fused(fused, out / fused.name)
        report["fusion"] = {"folder": str(fused_folder), **fused.record}
        log(f"{fused.name}: fused LoRA ({fuse}) {fused_folder}")
    if args.eval != "none":
        from .run import run_quality

        configs = [] if args.loras else [{"name": c.name, "loras": [str(out / c.name)], "concepts": [c.as_dict()]}
                                         for c in concepts]
        if len(concepts) > 1:
            configs.append({"name": "+".join(c.name for c in concepts) + ("" if fuse == "sum" else f" ({fuse})"),
                            "loras": [str(fused_folder)] if fused_folder else [str(f) for f in folders],
                            "concepts": [c.as_dict() for c in concepts]})
        eval_start = time.perf_counter()
        result = run_quality(pipe, ["erasure"], args.cache, args.seed, sizes=eval_sizes(args.eval), log=log,
                             options={"erasure": configs, "erasure_paraphrases": paraphrases.as_dict()})
        report["evaluation"] = {**result, "eval_sizes": args.eval}
        report["evaluation_seconds"] = round(time.perf_counter() - eval_start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    from ...erasure.report import markdown_report

    (out / "report.md").write_text(markdown_report(report))
    if args.gif:
        from ...erasure.media import before_after

        before_after(pipe, [fused_folder] if fused_folder else folders, Path(args.gif), seed=args.seed)
        log(f"GIF pair: {Path(args.gif) / 'before.gif'}, {Path(args.gif) / 'after.gif'}")
    print(f"{'fused' if args.loras else 'erased'} {', '.join(c.name for c in concepts)}: {out / 'report.md'}")
    procs.barrier()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m streamgen.bench.quality.erase_command erase ...``: the command without the ``streamgen`` entry
    point."""
    parser = argparse.ArgumentParser(prog="python -m streamgen.bench.quality.erase_command")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the pipeline's rule)")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
