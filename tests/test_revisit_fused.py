"""The model revisit bench's fused-cloud row (AnchorWeave's 'one globally fused point cloud' baseline)."""

import torch

from streamgen.bench.camera_command import MODEL_MEMORY_NAMES
from streamgen.bench.revisit import MODEL_MEMORIES, format_model_table, run_model_revisit


def test_the_model_bench_lists_fused_over_the_same_pool_as_coverage():
    assert "fused" in MODEL_MEMORIES and MODEL_MEMORY_NAMES == tuple(MODEL_MEMORIES)
    assert MODEL_MEMORIES["fused"] == ("fused", *MODEL_MEMORIES["coverage"][1:])  # same pool, K unused


def test_the_model_revisit_runs_the_fused_memory():
    from streamgen.models.camera import CameraEncoder
    from streamgen.tiny import build_tiny_pipeline

    torch.manual_seed(0)
    pipe = build_tiny_pipeline()
    pipe.register_modules(camera_encoder=CameraEncoder.for_transformer(pipe.transformer, anchors=True))
    pipe.set_progress_bar_config(disable=True)
    rows = run_model_revisit(pipe, away=(2,), trials=1, flights=("straight",), memories=("fused", "coverage"))
    assert [(r.flight, r.memory) for r in rows] == [("straight", "fused"), ("straight", "coverage")]
    assert rows[0].memory_bytes == rows[1].memory_bytes > 0 and rows[0].fps > 0
    assert "| straight, 2 chunks away | fused |" in format_model_table(rows)
