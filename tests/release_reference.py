"""Shared by the float64 references of the releases' switch algorithms (tests/test_longlive_switch.py,
tests/test_anchor_forcing_switch.py): what one reference transformer pass attends to."""

import torch


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
