"""A tiny StreamEngine whose position policy records every call: what the cache-mechanism tests inspect."""

import torch

from streamgen.cache import load_preset
from streamgen.engine import StreamEngine
from streamgen.models.causal_wan import CausalWanTransformer3DModel
from streamgen.sampling import EulerSampler

CHUNK = 3
LATENT = 4  # latent height = width: 2x2 tokens per frame with the tiny model's (1, 2, 2) patches


class RecordingPositions:
    """Wraps a position policy, keeping every (key frames, query frames, key positions, query positions)."""

    def __init__(self, policy):
        self.policy = policy
        self.calls = []

    def __getattr__(self, name):  # policy-specific methods (e.g. jump_next_chunk) reach the wrapped policy
        return getattr(self.policy, name)

    def __call__(self, key_frames, query_frames):
        keys, queries = self.policy(key_frames, query_frames)
        self.calls.append((list(key_frames), list(query_frames), keys.tolist(), queries.tolist()))
        return keys, queries


def make_engine(config, preset, num_prompts: int = 3):
    """(engine over a seeded tiny model with recorded positions, ``num_prompts`` random prompt K/V); ``preset`` is a
    name or path, or a loaded preset."""
    torch.manual_seed(0)
    model = CausalWanTransformer3DModel(**config).eval()
    engine = StreamEngine(
        model, load_preset(preset) if isinstance(preset, str) else preset, EulerSampler(num_inference_steps=1), batch_size=1,
        latent_channels=config["in_channels"], latent_height=LATENT, latent_width=LATENT, chunk_frames=CHUNK,
        generator=torch.Generator().manual_seed(0),
    )
    engine.context.positions = RecordingPositions(engine.context.positions)
    text = torch.Generator().manual_seed(1)
    prompts = [model.encode_prompt_kv(torch.randn(1, 5, config["text_dim"], generator=text)) for _ in range(num_prompts)]
    return engine, prompts


def generate(engine, chunks):
    """Generate ``chunks`` chunks from seeded noise."""
    for _ in range(chunks):
        engine.generate_chunk(torch.randn(1, engine.history.latents.shape[1], CHUNK, LATENT, LATENT,
                                          generator=engine.generator))


def regions(engine):
    """{region: latent frames it holds, oldest first}."""
    return {r.name: engine.cache.frames_in(r.name) for r in engine.cache.layout.regions}
