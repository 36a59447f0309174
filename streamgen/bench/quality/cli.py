"""``streamgen bench quality``: the command line over :mod:`.run` and :mod:`.report`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .harness import Layout
from .report import markdown_table, merged_runs
from .run import check_suites, run_quality, run_quality_compare, source_for
from .shard import device_for, merge_runs, process_state, run_jobs
from .suites import SUITES


def register_cli(bench_subparsers) -> argparse.ArgumentParser:
    """Add ``quality`` to the ``streamgen bench`` subcommands."""
    p = bench_subparsers.add_parser("quality", help="oracle-scored quality suites on held-out ShapeWorld prompts")
    p.add_argument("--pipeline", help="pipeline folder, or a shipped one by name (default: the embedded model)")
    p.add_argument("--cache", help="cache preset name or YAML path (default: the pipeline's)")
    p.add_argument("--json", help="write the full result here")
    p.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    p.add_argument("--compare", help="comma-separated cache presets to run on the same seeds (one table)")
    p.add_argument("--reference", action="store_true",
                   help="play the schedules with the ground-truth renderer instead of (or, with --compare, beside) "
                        "the pipeline")
    p.add_argument("--plots", help="write PNG plots into this folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds, for tests and smoke runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--erasure", action="append", metavar="LORA[,LORA...]",
                   help="the erasure suite's erased model: LoRA folders written by 'streamgen erase' (each with its "
                        "concept.json; a fused folder names several), several joined by commas are fused together "
                        "(--erasure-fuse); repeat for several models")
    p.add_argument("--erasure-fuse", choices=["sum", "closed-form"],
                   help="how comma-joined --erasure LoRAs are fused: their deltas added (default, as loading them one "
                        "after another), or MACE's closed-form refinement of the cross-attention K/V (each concept's "
                        "training captions keep their own LoRA's K/V, anchor captions the original's)")
    p.add_argument("--erasure-concepts", metavar="CONCEPT,...",
                   help="concepts whose baseline the erasure suite measures without a LoRA (default: "
                        "background:white)")
    p.add_argument("--table", nargs="+", metavar="JSON",
                   help="print one table from earlier --json results (e.g. halves of a comparison run in parallel) "
                        "instead of running anything")
    p.set_defaults(func=cmd_bench_quality)
    return p


def erasure_options(args) -> dict | None:
    """The erasure suite's options from --erasure / --erasure-fuse / --erasure-concepts (each LoRA folder names its
    concept, or a fused one its concepts)."""
    from ...erasure.fusion import FUSE_METHODS, read_concepts

    options = {}
    fuse = getattr(args, "erasure_fuse", None) or "sum"
    if fuse not in FUSE_METHODS:
        raise ValueError(f"--erasure-fuse must be one of {', '.join(FUSE_METHODS)}, got {fuse!r}")
    for spec in getattr(args, "erasure", None) or []:
        folders = [Path(part.strip()) for part in spec.split(",") if part.strip()]
        concepts, fused = [], None
        for folder in folders:
            try:
                found = read_concepts(folder)
            except ValueError as err:
                raise ValueError(f"--erasure {err}") from None
            if len(found) > 1:
                if len(folders) > 1:
                    raise ValueError(f"--erasure {spec}: {folder} is a fused LoRA; give it alone")
                fused = _fusion_method(folder)
            concepts += [{"attribute": c.attribute, "value": c.value} for c in found]
        name = "+".join(f"{c['attribute']}-{c['value']}" for c in concepts)
        config = {"name": name, "loras": [str(f) for f in folders], "concepts": concepts}
        if len(folders) > 1 and fuse != "sum":
            config["fuse"] = fuse
            config["name"] = f"{name} ({fuse})"
        elif fused is not None:
            config["name"] = f"{name} (fused: {fused})"
        taken = {c["name"] for c in options.get("erasure", [])}
        base, k = config["name"], 2
        while config["name"] in taken:
            config["name"], k = f"{base} #{k}", k + 1
        options.setdefault("erasure", []).append(config)
    if getattr(args, "erasure_concepts", None):
        options["erasure_concepts"] = [c.strip() for c in args.erasure_concepts.split(",") if c.strip()]
    return options or None


def _fusion_method(folder: Path) -> str:
    try:
        return str(json.loads((folder / "concept.json").read_text())["fusion"]["method"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def _sharded(state, args, pipe, suites, options, log) -> tuple[dict, str] | None:
    """(result, table) of the run or comparison, computed as (label, suite) jobs over the launch's processes; None
    off the main one."""
    if args.compare:
        labels = [p.strip() for p in args.compare.split(",") if p.strip()] + (["reference"] if args.reference else [])
    else:
        labels = ["reference" if args.reference else None]
    layout = Layout.of(pipe) if pipe is not None else None
    jobs = [(label, suite) for label in labels for suite in suites]

    def run(job):
        label, suite = job
        if label == "reference":
            return run_quality("reference", [suite], None, args.seed, quick=args.quick, out_dir=args.plots,
                               layout=layout, log=log, options=options)
        return run_quality(pipe, [suite], label if args.compare else args.cache, args.seed, quick=args.quick,
                           out_dir=args.plots, log=log, options=options)

    results = run_jobs(state, jobs, run)
    if results is None:
        return None
    runs = merge_runs([(job[0] or result["cache"], result) for job, result in zip(jobs, results)])
    if args.compare:
        table = markdown_table(runs)
        return {"benchmark": "quality-compare", "runs": runs, "table": table}, table
    return next(iter(runs.values())), markdown_table(runs)


def cmd_bench_quality(args) -> int:
    from ...process_group import barrier  # here, not at the top: building the CLI's parser imports no torch

    if args.table:
        print(markdown_table(merged_runs(args.table)))
        return 0
    suites = check_suites(args.suites)
    options = erasure_options(args)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    pipeline = args.pipeline
    if pipeline is not None or not (args.reference and not args.compare):
        from ...resources import find_pipeline

        pipeline = str(find_pipeline(pipeline))  # a folder, a shipped name, or (None) the embedded default
    state = process_state()
    if pipeline is not None:  # loaded once here, on this process's device, and given its default threads
        pipeline = source_for(pipeline, None, device_for(state, args.device), None).pipe
        if getattr(args, "threads", None) is None:
            from ...threads import use_default_threads

            use_default_threads(pipeline)
    if state is not None:  # launched on several processes: (preset, suite) jobs shared out, merged on the main one
        sharded = _sharded(state, args, pipeline, suites, options, log)
        if sharded is None:
            barrier(state)  # stay in the group until the main process has written the result
            return 0
        result, table = sharded
    elif args.compare:
        presets = [p.strip() for p in args.compare.split(",") if p.strip()]
        result = run_quality_compare(pipeline, presets, suites, args.seed, reference=args.reference,
                                     quick=args.quick, out_dir=args.plots, device=args.device, log=log,
                                     options=options)
        table = result["table"]
    else:
        if args.reference:
            layout = None
            if pipeline is not None:
                layout = Layout.of(pipeline)
            result = run_quality("reference", suites, None, args.seed, quick=args.quick, out_dir=args.plots,
                                 layout=layout, log=log, options=options)
            label = "reference"
        else:
            result = run_quality(pipeline, suites, args.cache, args.seed, quick=args.quick, out_dir=args.plots,
                                 device=args.device, log=log, options=options)
            label = result["cache"]
        table = markdown_table({label: result})
    print(table)
    erasure = result.get("suites", {}).get("erasure") if "suites" in result else None
    if erasure is not None and erasure.get("erased"):
        from ...erasure.report import suite_tables

        print()
        print(suite_tables(erasure))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if state is not None:
        # The processes leave together: one that exits first closes its gloo connections under a process still
        # working, which can abort it (seen: SIGABRT in 1 of ~10 launches).
        barrier(state)
    return 0
