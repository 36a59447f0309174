"""What a training run cost and how it went: ``python -m streamgen.train.report RUN_DIR [--plots DIR]``.

Reads the trainer's ``log.jsonl`` (loss per ``log_every`` steps, seconds per step) and ``eval.jsonl`` (oracle
scores of held-out samples) from a run folder, or from a shipped pipeline's ``training/`` folder, and prints the
compute spent and a markdown table of the evals; ``--plots`` also draws the loss and the eval curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ATTRIBUTES = ("background", "color", "shape", "direction", "speed")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def summarize(run: str | Path) -> dict:
    """{steps, train_seconds, device, threads, loss_first, loss_last, evals: [...]} of a run folder."""
    run = Path(run)
    log, evals = _records(run / "log.jsonl"), _records(run / "eval.jsonl")
    if not log:
        raise ValueError(f"{run}: no log.jsonl (pass a training output folder or a pipeline's training/ folder)")
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    per_device: dict[str, float] = {}
    previous = 0
    for record in log:  # each record covers the steps since the previous one (a resume restarts the window)
        device = record.get("device") or config.get("device") or "cpu"  # phases on another machine name theirs
        processes = record.get("processes", 1)  # a launched run's record: each of its processes spent that time
        per_device[device] = per_device.get(device, 0.0) + record["seconds_per_step"] * (record["step"] - previous) * processes
        previous = record["step"]
    return {
        "steps": log[-1]["step"],
        "train_seconds": sum(per_device.values()),
        "seconds_per_device": per_device,
        "device": " + ".join(per_device),
        "threads": config.get("torch_threads"),
        "batch_size": config.get("batch_size"),
        "loss_first": log[0]["loss"],
        "loss_last": log[-1]["loss"],
        "log": log,
        "evals": [e for e in evals if "single_accuracy" in e],
    }


def markdown(summary: dict) -> str:
    threads = f", {summary['threads']} threads" if summary["threads"] else ""
    spent = " + ".join(f"{seconds / 3600:.2f} h on {device}" for device, seconds in summary["seconds_per_device"].items())
    lines = [
        f"{summary['steps']:,} steps (batch {summary['batch_size']}{threads} in the config) in {spent} (evals "
        f"excluded); loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}",
        "",
        "| step | " + " | ".join(ATTRIBUTES) + " |",
        "| --- |" + " --- |" * len(ATTRIBUTES),
    ]
    for e in summary["evals"]:
        acc = e["single_accuracy"]
        lines.append(f"| {e['step']:,} | " + " | ".join(f"{100 * acc.get(a, float('nan')):.1f}%" for a in ATTRIBUTES) + " |")
    return "\n".join(lines)


def plot(summary: dict, out_dir: str | Path) -> list[Path]:
    from ..bench.quality_plot import line_chart

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = summary["log"]
    paths = [line_chart(out / "loss.png", {"loss": ([r["step"] for r in log], [r["loss"] for r in log])},
                        title="training loss (flow matching MSE)", xlabel="step", ylabel="loss", y_range=None)]
    if summary["evals"]:
        steps = [e["step"] for e in summary["evals"]]
        series = {a: (steps, [e["single_accuracy"].get(a, float("nan")) for e in summary["evals"]]) for a in ATTRIBUTES}
        paths.append(line_chart(out / "eval.png", series, title="oracle accuracy of held-out samples (single)",
                                xlabel="step", ylabel="accuracy"))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", help="training output folder, or a pipeline's training/ folder")
    parser.add_argument("--plots", help="write loss.png and eval.png here")
    args = parser.parse_args(argv)
    summary = summarize(args.run)
    print(markdown(summary))
    for path in plot(summary, args.plots) if args.plots else ():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
