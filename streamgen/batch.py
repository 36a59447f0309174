"""Batch generation of a prompt file, sharded over processes with accelerate.

    accelerate launch --multi_gpu --num_processes 8 -m streamgen.batch --prompts prompts.jsonl --out-dir videos/
    torchrun --nproc_per_node 2 -m streamgen.batch --threads 1 --prompts prompts.jsonl --out-dir videos/   # CPU

Each line / schedule of the prompt file becomes ``OUT_DIR/NNNN.mp4`` (NNNN = its index in the file), so the output
does not depend on how many processes ran. Every process loads the pipeline on its own device and takes every
n-th schedule (line i goes to process i mod N); a single process (plain ``python -m streamgen.batch``) does them
all. A video depends on its line and seed only: the files of N processes are byte for byte those of one
(docs/distributed.md). Without a GPU the processes meet over gloo.

The run is resumable: OUT_DIR/manifest.jsonl records what each finished video was made from (prompts, seed,
schedule, cache preset, frames, checkpoint hash). Run the same command again and a video that is complete and asked
for the same is skipped; one cut short, or asked for differently, is made again (written to NNNN.mp4.partial,
renamed when whole). With ``--snapshot-every N`` a video cut short is not started over: its stream's snapshot
(OUT_DIR/.snapshots/NNNN/, removed once the video is whole) resumes it, keeping the frames made before it
(docs/snapshots.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .loading import int_list

SNAPSHOTS = ".snapshots"  # OUT_DIR/.snapshots/NNNN/: a video's stream snapshot while it is being made
BATCH_KEY = "batch"  # the snapshot manifest's entry saying what the video was asked to be


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamgen.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", required=True, help="schedule file (.yaml/.json, LongLive .jsonl, Echo .txt)")
    parser.add_argument("--out-dir", default="videos")
    parser.add_argument("--pipeline", help="pipeline folder, or a shipped one by name (default: the embedded model)")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--cache", help="cache preset (default: the pipeline's)")
    parser.add_argument("--switch-frame-indices", type=int_list)
    parser.add_argument("--seed", type=int, help="seed every video with SEED + its index, over the file's own seeds "
                        "(default: a line's own seed, as the releases do, else its index)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even where a GPU is present")
    parser.add_argument("--threads", type=int, help="torch CPU threads of each process (default: the model's, 1 for "
                        "a model under 100M parameters, else the physical cores, divided among the processes on "
                        "this machine)")
    parser.add_argument("--snapshot-every", type=int, metavar="N", help="snapshot each video's stream every N "
                        "chunks into OUT_DIR/.snapshots/NNNN/, so that running the command again resumes a video cut "
                        "short mid-way instead of starting it over (default: off)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show diffusers' / transformers' loading bars")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.snapshot_every is not None and args.snapshot_every < 1:
        parser.error(f"--snapshot-every must be at least 1 chunk, got {args.snapshot_every}")

    import torch
    from accelerate import PartialState

    from .batch_manifest import Manifest, checkpoint_hash
    from .loading import open_pipeline
    from .process_group import barrier
    from .progress import quiet_loading
    from .resources import find_pipeline
    from .schedule import ScheduleError, load_schedules
    from .resumable_run import RunRecord, Snapshotter, finish_video
    from .video_io import Mp4StreamWriter, partial_path

    # Without a GPU, accelerate only forms a process group when told it runs on CPU (gloo backend).
    state = PartialState(cpu=args.cpu or not torch.cuda.is_available())
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        schedules = load_schedules(args.prompts, switch_frame_indices=args.switch_frame_indices)
    except ScheduleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with quiet_loading(not args.verbose):
        pipe = open_pipeline(args.pipeline, str(state.device))
    if args.threads is None:  # the model's default, shared among the processes on this machine
        from .threads import default_threads

        torch.set_num_threads(max(1, default_threads(pipe) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    checkpoint = checkpoint_hash(find_pipeline(args.pipeline))
    preset = pipe.cache_preset(args.cache).name
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir)
    mine = list(enumerate(schedules))[state.process_index :: state.num_processes]
    for index, schedule in mine:
        if args.seed is not None:
            seed = args.seed + index
        else:
            seed = schedule.seed if schedule.seed is not None else index
        path = out_dir / f"{index:04d}.mp4"
        wanted = {"video": path.name, "source": Path(args.prompts).name, "line": index,
                  "prompts": [segment.prompt for segment in schedule.segments], "seed": seed,
                  "schedule": schedule.to_dict(), "preset": preset, "frames": args.frames, "checkpoint": checkpoint}
        tag = f"[process {state.process_index}/{state.num_processes}]"
        if manifest.complete(path, wanted):
            print(f"{tag} {path} (complete, skipped)", flush=True)
            continue
        snapshot_dir = out_dir / SNAPSHOTS / f"{index:04d}"
        resumed = _resume_video(pipe, snapshot_dir, wanted, path, tag) if args.snapshot_every else None
        if resumed is not None:
            stream, record = resumed
        else:
            generator = torch.Generator().manual_seed(seed)
            stream = pipe.stream(schedule=schedule, num_frames=args.frames, cache=args.cache, generator=generator)
            record = RunRecord(str(find_pipeline(args.pipeline)), str(state.device), "fp32", str(path.resolve()), 0,
                               args.snapshot_every or 1)
        snapshots = Snapshotter(snapshot_dir, record, {BATCH_KEY: wanted}) if args.snapshot_every else None
        partial = partial_path(path)
        with Mp4StreamWriter(partial, fps=pipe.config.fps) as writer:
            for chunk in stream:
                writer.write(chunk.frames[0])
                if snapshots is not None:
                    snapshots.after_chunk(stream, writer.frames_written)
        # Whole or absent: a killed run leaves only the .partial (and a resumed one's frames follow its kept prefix).
        manifest.record(wanted, finish_video(snapshot_dir, record, partial, path, writer.frames_written))
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        print(f"{tag} {path}", flush=True)
    barrier(state)
    return 0


def _resume_video(pipe, snapshot_dir: Path, wanted: dict, path: Path, tag: str):
    """(stream, run record) going on from the video's snapshot, or None to start it over: no snapshot, one of a
    video asked for differently, or one that cannot be used (said on stdout)."""
    from .resumable_run import SNAPSHOT_NAME, RunRecord, keep_frames_before
    from .snapshot import SnapshotError, read_manifest

    snapshot = snapshot_dir / SNAPSHOT_NAME
    if not snapshot.is_file():
        return None
    try:
        manifest = read_manifest(snapshot)
        if json.dumps(manifest["extra"].get(BATCH_KEY), sort_keys=True) != json.dumps(wanted, sort_keys=True):
            raise SnapshotError("it was taken for a video asked for differently")
        stream = pipe.resume(snapshot)
        record = keep_frames_before(snapshot_dir, RunRecord.from_manifest(manifest, snapshot), path, None)
    except SnapshotError as err:
        print(f"{tag} {path}: its snapshot is not used ({err}); starting it over", flush=True)
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        return None
    print(f"{tag} {path}: resumed at chunk {stream.chunks} ({record.prefix_frames} frames kept)", flush=True)
    return stream, record


if __name__ == "__main__":
    sys.exit(main())
