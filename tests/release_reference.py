"""Shared by the float64 references of the releases' switch algorithms (tests/test_longlive_switch.py,
tests/test_anchor_forcing_switch.py): what one reference transformer pass attends to."""

import torch

from streamgen.engine import StreamEngine
from streamgen.models.causal_wan import CausalWanTransformer3DModel
from streamgen.sampling import FewStepSampler


class PassKV:
    """What one reference pass attends to: stored ``context`` K/V (per frame, per layer), then the pass's own frames
    ``attended`` (indices into the pass); the pass's fresh K/V are kept per layer for the caller to store."""

    def __init__(self, tokens, context, attended):
        self.tokens, self.context, self.attended = tokens, context, attended
        self.k, self.v = {}, {}

    def write(self, layer, k, v):  # [B, n_frames * tokens, H, D]
        self.k[layer], self.v[layer] = k, v

    def read(self, layer):
        def own(t):
            return t.unflatten(1, (-1, self.tokens))[:, self.attended].flatten(1, 2)

        ks = [k[layer] for k, _ in self.context] + [own(self.k[layer])]
        vs = [v[layer] for _, v in self.context] + [own(self.v[layer])]
        return torch.cat(ks, dim=1), torch.cat(vs, dim=1)

    def frame_kv(self, i):
        tokens = slice(i * self.tokens, (i + 1) * self.tokens)
        return [self.k[layer][:, tokens] for layer in range(len(self.k))], \
            [self.v[layer][:, tokens] for layer in range(len(self.v))]


def stream_side_by_side(config, preset, make_reference, switches, frames, chunk, latent):
    """Per chunk, (the engine's x0 under ``preset``, the float64 reference's x0) with the same weights, noise and
    prompts. ``make_reference(model, generator)`` builds the reference; ``switches`` maps the frame a switch plays
    at to the frame it was asked for (the engine's ``switch_index``; the reference's ``switch(prompt, asked)``)."""
    torch.manual_seed(0)
    model = CausalWanTransformer3DModel(**config).eval()
    reference = CausalWanTransformer3DModel(**config).eval().double()
    reference.load_state_dict(model.state_dict())
    sampler = FewStepSampler()
    engine = StreamEngine(model, preset, sampler, batch_size=1, latent_channels=config["in_channels"],
                          latent_height=latent, latent_width=latent, chunk_frames=chunk,
                          generator=torch.Generator().manual_seed(1))
    ref = make_reference(reference, torch.Generator().manual_seed(1))
    texts = torch.randn(len(switches) + 1, 1, 5, config["text_dim"], generator=torch.Generator().manual_seed(2))
    noise = torch.Generator().manual_seed(3)
    pairs, prompt = [], 0
    with torch.no_grad():
        engine.set_prompt(model.encode_prompt_kv(texts[0]))
        ref.prompt = reference.encode_prompt_kv(texts[0].double())
        for start in range(0, frames, chunk):
            if start in switches:
                prompt += 1
                engine.set_prompt(model.encode_prompt_kv(texts[prompt]), switch_index=switches[start])
                ref.switch(reference.encode_prompt_kv(texts[prompt].double()), switches[start])
            chunk_noise = torch.randn(1, config["in_channels"], chunk, latent, latent, generator=noise)
            pairs.append((engine.generate_chunk(chunk_noise), ref.chunk(chunk_noise, sampler.sigmas().tolist())))
    return pairs


def relative_errors(pairs):
    """Per chunk, max |ours - reference| / max |reference|."""
    return [((ours.double() - ref).abs().max() / ref.abs().max()).item() for ours, ref in pairs]
