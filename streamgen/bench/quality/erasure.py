"""The ``erasure`` suite: how often the oracle still finds an erased concept, with the erased model beside the
original on the same seeds, and what the erasure costs every other attribute value.

Configuration (``run.options["erasure"]``, from ``streamgen bench quality --erasure DIR[,DIR...]`` or ``streamgen
erase``): a list of erased models, each ``{"name", "loras": [LoRA folders], "concepts": [{"attribute", "value"}]}``;
several LoRAs are fused together: their deltas added, or with ``"fuse": "closed-form"`` by MACE's closed form
(:mod:`streamgen.erasure.fusion`, settings from ``run.options["erasure_fusion"]``, prompts from the run's training
paraphrases); a folder written by :func:`~streamgen.erasure.fusion.save_fused` is one LoRA. Without it the suite
measures the baselines of ``run.options["erasure_concepts"]`` (default: :data:`DEFAULT_CONCEPTS`, the white
background) and reports no erased model.

Per concept, the share of frames in which the oracle reads the concept's value (the concept's *rate*) when it is
prompted:

- ``direct``: training-template captions (the ones ``streamgen erase`` fine-tunes on), ``erasure_chunks`` chunks;
- ``paraphrase``: held-out templates and synonyms, never used in fine-tuning;
- ``switch_cut`` / ``switch_smooth``: after ``erasure_switch_before`` chunks of a scene without it, a switch into it
  (rate over the chunks after the switch);
- ``long``: a cut into it, then ``erasure_long_frames`` frames of it (rate over all of them, and over their last
  quarter: does the concept come back through the cache?).

For every erased model and every attribute value it did not erase, single-suite accuracy (the single suite's
videos) before and after: per value, over the videos prompted with that value and with no concept this model
erased (the erased prompts are measured above); averaged per attribute. Also over all videos.

Bars (the issue's): an erased concept is ``erased`` when every rate is <= 5% of frames; the erasure ``keeps`` the
rest when no attribute's mean accuracy drops by more than 2 points. A concept whose baseline ``direct`` rate is under
30% is ``measurable: false`` and never counted as erased.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...erasure.concepts import (DEFAULT_PARAPHRASES, ERASABLE, Concept, Paraphrases, attributes_with,
                                 concept_caption, parse_concept)
from ...world.scenes import Draws, Scene, sample_details
from .harness import APPEARANCE, Runner, Video, rounded, scene_ids
from .suites import Row, Suite, register_suite, single_videos, video_seed

SEED_ID = 8  # 7 is the seed id of CONTRIBUTING.md's worked example
DEFAULT_CONCEPTS = ("background:white",)  # one, measurable on today's model; more with --erasure-concepts
CONDITIONS = ("direct", "paraphrase", "switch_cut", "switch_smooth", "long")
MAX_RATE = 0.05  # an erased concept shows in at most 5% of prompted frames
MAX_DROP = 0.02  # every other attribute's mean accuracy drops at most 2 points
MIN_BASELINE = 0.30  # below this, the concept is too rare to measure its erasure


def _concepts(run: Runner) -> list[Concept]:
    configs = run.options.get("erasure") or []
    named = [Concept(**{k: c[k] for k in ("attribute", "value")}) for cfg in configs for c in cfg["concepts"]]
    named += [parse_concept(c) if isinstance(c, str) else c for c in run.options.get("erasure_concepts", ())]
    if not named:
        named = [parse_concept(c) for c in DEFAULT_CONCEPTS]
    return list(dict.fromkeys(named))


def _paraphrases(run: Runner) -> Paraphrases:
    p = run.options.get("erasure_paraphrases")
    if p is None:
        return DEFAULT_PARAPHRASES
    return p if isinstance(p, Paraphrases) else Paraphrases(tuple(p["train"]), tuple(p["heldout"]),
                                                            p.get("source", "options"))


def _scene(attributes, caption: str, draws: Draws) -> Scene:
    seed = draws.next64() >> 33
    return Scene(attributes, sample_details(attributes, Draws(seed, 2)), caption, seed)


def concept_id(concept: Concept) -> int:
    """A fixed number per concept (its place among every erasable one), so that a concept's videos never depend on
    which other concepts a run measures."""
    ids = [(attribute, value) for attribute, values in ERASABLE.items() for value in values]
    return ids.index((concept.attribute, concept.value))


def concept_videos(run: Runner, concept: Concept, paraphrases: Paraphrases) -> dict[str, list[tuple[Video, int]]]:
    """{condition: [(video, index of the part showing the concept)]} for ``concept``: fixed by the run's seed and the
    concept alone."""
    s = run.sizes
    index = concept_id(concept)
    videos: dict[str, list[tuple[Video, int]]] = {c: [] for c in CONDITIONS}
    chunk_video = run.layout.frames_for_latents(run.layout.chunk_frames)
    long_chunks = max(1, -(-s.erasure_long_frames // max(1, chunk_video)))
    for c, condition in enumerate(CONDITIONS):
        count = s.erasure_long_videos if condition == "long" else s.erasure_videos
        for i in range(count):
            draws = Draws(run.seed, SEED_ID, index, c, i)
            templates = paraphrases.heldout if condition == "paraphrase" else paraphrases.train
            template = templates[i % len(templates)]
            attributes = attributes_with([concept], draws)
            caption = concept_caption(template, attributes, draws, concept, synonyms=condition == "paraphrase")[0]
            scene = _scene(attributes, caption, draws)
            seed = video_seed(run, "erasure", index, c, i)
            if condition in ("direct", "paraphrase"):
                videos[condition].append((Video(((scene, s.erasure_chunks, "cut"),), seed), 0))
                continue
            other_attributes = attributes_with([], draws, avoid=[concept])
            other = _scene(other_attributes, concept_caption(template, other_attributes, draws)[0], draws)
            mode = "smooth" if condition == "switch_smooth" else "cut"
            chunks = long_chunks if condition == "long" else s.erasure_chunks
            videos[condition].append((Video(((other, s.erasure_switch_before, "cut"), (scene, chunks, mode)), seed), 1))
    return videos


def _rates(play, concept: Concept, videos: dict[str, list[tuple[Video, int]]]) -> dict:
    out = {}
    for condition, items in videos.items():
        rates, last = [], []
        for video, part in items:
            generated, readout = play(video)
            frames = np.flatnonzero(generated.segment == part)
            shown = getattr(readout, concept.attribute)[frames] == ERASABLE[concept.attribute].index(concept.value)
            rates.append(float(shown.mean()))
            last.append(float(shown[-max(1, len(shown) // 4):].mean()))
        out[condition] = rounded(float(np.mean(rates))) if rates else None
        if condition == "long":
            out["long_last_quarter"] = rounded(float(np.mean(last))) if last else None
    return out


def _value_accuracy(play, videos: list[Video], erased: list[Concept]) -> dict:
    """{attribute: {value: {accuracy, videos}}} per-frame accuracy of single videos, skipping erased values and (for
    ``clean``) videos prompted with an erased concept; plus the same over all videos."""
    out = {}
    for attribute in APPEARANCE:
        values = ERASABLE[attribute]
        per_value = {v: {"clean": [], "all": []} for v in values
                     if Concept(attribute, v) not in erased}
        for video in videos:
            scene = video.parts[0][0]
            value = getattr(scene.attributes, attribute)
            if value not in per_value:
                continue
            _, readout = play(video)
            hit = float((getattr(readout, attribute) == scene_ids(scene)[attribute]).mean())
            per_value[value]["all"].append(hit)
            if not any(c.present(scene.attributes) for c in erased):
                per_value[value]["clean"].append(hit)
        out[attribute] = {v: {"accuracy": rounded(np.mean(d["clean"])) if d["clean"] else None,
                              "accuracy_all_videos": rounded(np.mean(d["all"])) if d["all"] else None,
                              "videos": len(d["clean"]), "videos_all": len(d["all"])} for v, d in per_value.items()}
    return out


def _mean_of(values: dict, key: str) -> float | None:
    found = [v[key] for v in values.values() if v[key] is not None]
    return rounded(float(np.mean(found))) if found else None


class _ErasedRunner:
    """Plays videos with the erased model (its own cache of videos: never mixed with the original's)."""

    def __init__(self, run: Runner):
        self.run = run
        self.videos: dict = {}

    def play(self, video: Video):
        from ...world.oracle import read_frames

        key = video.key()
        if key not in self.videos:
            generated = self.run.source.generate(video)
            self.videos[key] = (generated, read_frames(generated.frames))
        return self.videos[key]


def erasure(run: Runner) -> dict:
    """See the module docstring."""
    concepts = _concepts(run)
    paraphrases = _paraphrases(run)
    videos = {c.name: concept_videos(run, c, paraphrases) for c in concepts}
    single = single_videos(run)
    baseline = {}
    for c in concepts:
        rates = _rates(run.play, c, videos[c.name])
        baseline[c.name] = {**c.as_dict(), "label": c.label, "baseline": rates,
                            "measurable": rates["direct"] is not None and rates["direct"] >= MIN_BASELINE}
    erased_results = {}
    pipe = getattr(run.source, "pipe", None)
    for config in run.options.get("erasure") or []:
        erased = [Concept(c["attribute"], c["value"]) for c in config["concepts"]]
        before = _value_accuracy(run.play, single, erased)
        if pipe is None:  # the reference renderer has no weights to erase
            erased_results[config["name"]] = {"loras": list(config["loras"]), "skipped": "not a pipeline"}
            continue
        names, fusion = [], None
        try:
            if config.get("fuse", "sum") != "sum" and len(config["loras"]) > 1:
                from ...erasure.fusion import FusionConfig, fuse_folders

                fused = fuse_folders(pipe, config["loras"], config["fuse"], paraphrases,
                                     FusionConfig(**run.options.get("erasure_fusion", {})))
                fusion = fused.record
                names.append(pipe.load_lora_weights(fused.weights, adapter_name="erasure-fused"))
            else:
                for k, lora in enumerate(config["loras"]):
                    names.append(pipe.load_lora_weights(lora, adapter_name=f"erasure-{k}"))
            player = _ErasedRunner(run)
            rates = {c.name: _rates(player.play, c, videos[c.name]) for c in erased}
            after = _value_accuracy(player.play, single, erased)
        finally:
            if names:
                pipe.unload_lora_weights()
        attributes = {}
        for attribute in APPEARANCE:
            values = {v: {"before": before[attribute][v]["accuracy"], "after": after[attribute][v]["accuracy"],
                          "before_all_videos": before[attribute][v]["accuracy_all_videos"],
                          "after_all_videos": after[attribute][v]["accuracy_all_videos"],
                          "videos": before[attribute][v]["videos"]} for v in before[attribute]}
            mean_before, mean_after = _mean_of(values, "before"), _mean_of(values, "after")
            drop = None if mean_before is None or mean_after is None else rounded(mean_before - mean_after)
            attributes[attribute] = {"values": values, "mean_before": mean_before, "mean_after": mean_after,
                                     "drop": drop, "mean_before_all_videos": _mean_of(values, "before_all_videos"),
                                     "mean_after_all_videos": _mean_of(values, "after_all_videos")}
        verdicts = {}
        for c in erased:
            worst = max((v for v in rates[c.name].values() if v is not None), default=None)
            measurable = baseline[c.name]["measurable"]
            verdicts[c.name] = {"max_rate": worst, "measurable": measurable,
                                "erased": bool(measurable and worst is not None and worst <= MAX_RATE)}
        drops = [a["drop"] for a in attributes.values() if a["drop"] is not None]
        keeps = bool(drops) and max(drops) <= MAX_DROP
        erased_results[config["name"]] = {
            "loras": [str(Path(p)) for p in config["loras"]], "concepts": [c.name for c in erased],
            "fuse": config.get("fuse", "sum") if len(config["loras"]) > 1 else None,
            **({"fusion": fusion} if fusion is not None else {}),
            "rates": rates, "verdicts": verdicts, "attributes": attributes,
            "max_attribute_drop": rounded(max(drops)) if drops else None, "keeps_other_attributes": keeps,
            "meets_bar": keeps and all(v["erased"] for v in verdicts.values()),
        }
    path = run.plot_path("erasure")
    if path is not None:
        from ..quality_plot import bar_chart

        groups = {}
        for c in concepts:
            for condition in CONDITIONS:
                series = {"original": baseline[c.name]["baseline"][condition]}
                for config, r in erased_results.items():
                    if c.name in r.get("rates", {}):
                        series[config] = r["rates"][c.name][condition]
                groups[f"{c.value} {condition.replace('switch_', '')[:6]}"] = series
        bar_chart(path, groups, title=f"erasure [{run.label}]: frames showing the concept",
                  ylabel="fraction of frames")
    return {"concepts": baseline, "erased": erased_results, "paraphrases": paraphrases.as_dict(),
            "videos_per_condition": run.sizes.erasure_videos, "long_frames": run.sizes.erasure_long_frames,
            "single_videos": len(single),
            "bars": {"max_rate": MAX_RATE, "max_attribute_drop": MAX_DROP, "min_baseline": MIN_BASELINE}}


def erasure_rows(result: dict) -> list[Row]:
    e, rows = result["suites"]["erasure"], []
    for name, c in e["concepts"].items():
        for condition in CONDITIONS:  # (whether the baseline is measurable is in the JSON and the erase report)
            rows.append((f"erasure {c['label']}: {condition.replace('_', ' ')}, original", c["baseline"][condition],
                         "pct"))
    for config, r in e["erased"].items():
        if "rates" not in r:
            continue
        for name, rates in r["rates"].items():
            label = e["concepts"][name]["label"]
            for condition in CONDITIONS:
                rows.append((f"erasure [{config}] {label}: {condition.replace('_', ' ')}", rates[condition], "pct"))
        for attribute, a in r["attributes"].items():
            rows.append((f"erasure [{config}] other {attribute} values: accuracy before", a["mean_before"], "pct"))
            rows.append((f"erasure [{config}] other {attribute} values: accuracy after", a["mean_after"], "pct"))
    return rows


register_suite(Suite("erasure", SEED_ID, erasure, erasure_rows))
