"""The erasure report in markdown: per concept its rate in each condition for the original and each erased model
(with the verdict against the bars), then every other attribute's single-suite accuracy before and after."""

from __future__ import annotations

CONDITIONS = ("direct", "paraphrase", "switch_cut", "switch_smooth", "long", "long_last_quarter")
HEADS = ("direct", "held-out paraphrase", "after cut", "after smooth", "200-frame stream", "its last quarter")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def suite_tables(suite: dict) -> str:
    """Markdown tables of one ``erasure`` suite result (``result["suites"]["erasure"]``)."""
    concepts, erased, bars = suite["concepts"], suite["erased"], suite["bars"]
    lines = [f"Share of frames in which the oracle reads the concept (bar: <= {_pct(bars['max_rate'])} in every "
             f"condition; a baseline under {_pct(bars['min_baseline'])} direct is not measurable).", "",
             "| concept | model | " + " | ".join(HEADS) + " | verdict |",
             "| --- | --- | " + " | ".join("---" for _ in HEADS) + " | --- |"]
    for name, c in concepts.items():
        note = "" if c["measurable"] else " (baseline < 30%: not measurable, not counted)"
        lines.append(f"| {c['label']}{note} | original | " + " | ".join(_pct(c["baseline"].get(k))
                                                                       for k in CONDITIONS) + " | baseline |")
        for config, r in erased.items():
            if name not in r.get("rates", {}):
                continue
            v = r["verdicts"][name]
            verdict = ("erased" if v["erased"] else "not measurable" if not v["measurable"]
                       else f"not erased (max {_pct(v['max_rate'])})")
            lines.append(f"| {c['label']} | erased `{config}` | " + " | ".join(_pct(r["rates"][name].get(k))
                                                                            for k in CONDITIONS)
                         + f" | {verdict} |")
    lines += ["", f"Every other attribute value's single-suite accuracy, averaged per attribute (bar: drop <= "
                  f"{100 * bars['max_attribute_drop']:.0f} points); videos prompted with an erased concept left out "
                  "(in brackets: all videos).", "",
              "| erased | attribute | before | after | drop (points) |", "| --- | --- | --- | --- | --- |"]
    for config, r in erased.items():
        for attribute, a in r.get("attributes", {}).items():
            drop = "n/a" if a["drop"] is None else f"{100 * a['drop']:+.1f}".replace("+", "")
            lines.append(f"| `{config}` | {attribute} | {_pct(a['mean_before'])} ({_pct(a['mean_before_all_videos'])})"
                         f" | {_pct(a['mean_after'])} ({_pct(a['mean_after_all_videos'])}) | {drop} |")
        if "attributes" in r:
            lines.append(f"| `{config}` | **meets the bar** | | | {'yes' if r['meets_bar'] else 'no'} |")
    return "\n".join(lines) + "\n"


def markdown_report(report: dict) -> str:
    """The whole ``streamgen erase`` report: settings, training, and the suite's tables if it ran."""
    s = report["settings"]
    lines = [f"# Erasure report: {', '.join(c['name'] for c in report['concepts'])}", ""]
    if report["training"]:
        lines += [f"Pipeline `{report['pipeline']}`; {s['steps']} steps per concept at lr {s['lr']:g}, rank "
                  f"{s['rank']}, batch {s['batch']}, unconditional `{s['unconditional']}`, switch at "
                  f"{s['switch_progress']:.3f} of the trajectory, saliency mask {'on' if s['masked'] else 'off'}, "
                  f"rollouts with guidance {s['guidance_scale']:g}; seed {s['seed']}.", "",
                  "| concept | states | steps (resumed from) | loss first -> last | masked share | seconds |",
                  "| --- | --- | --- | --- | --- | --- |"]
    else:
        lines.append(f"Pipeline `{report['pipeline']}`; LoRAs trained before, fused; seed {s['seed']}.")
    for name, t in report["training"].items():
        first, last = t.get("loss_first"), t.get("loss_last")
        loss = "n/a" if first is None else f"{first:.3g} -> {last:.3g}"
        lines.append(f"| {name} | {t.get('states', 'n/a')} | {t['steps']} ({t['resumed_from']}) | {loss} | "
                     f"{t.get('masked_fraction')} | {t['seconds']} |")
    fusion = report.get("fusion")
    if fusion:
        lines += ["", f"Fused by `{fusion['method']}` into `{fusion['folder']}` (rank {fusion['rank']}"
                      + (f"; settings {fusion['config']}" if "config" in fusion else "") + ")."]
    evaluation = report.get("evaluation")
    if evaluation:
        lines += ["", f"## Evaluation (erasure suite, `{evaluation.get('eval_sizes')}` sizes, seed {evaluation['seed']}, "
                      f"{report.get('evaluation_seconds')} s)", "", suite_tables(evaluation["suites"]["erasure"])]
    return "\n".join(lines) + "\n"
