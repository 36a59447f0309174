"""Camera conditioning (streamgen.models.camera): Plücker rays at the latent grid, a zero-initialised encoder that
leaves every existing model's output unchanged until trained, and a diffusers round trip."""

import math

import pytest
import torch

from streamgen.geometry import Intrinsics
from streamgen.models.camera import CameraEncoder, latent_plucker
from streamgen.models.causal_wan import CausalWanTransformer3DModel, block_causal_mask
from streamgen.world.camera import CameraState, camera_to_world, default_intrinsics, pan

from conftest import TINY_WAN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = dict(TINY_WAN, patch_size=(1, 4, 4), in_channels=3, out_channels=3, text_dim=8, freq_dim=16)
    return CausalWanTransformer3DModel(**config).eval()


def run(model, x, camera_tokens=None):
    frames = x.shape[2]
    positions = torch.arange(frames)
    rotary = model.rotary(positions, positions, x.shape[-2], x.shape[-1])
    kv = model.encode_prompt_kv(torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(2)))
    return model.forward_chunk(x, 500.0, kv, None, rotary, attention_mask=block_causal_mask(frames, 3, 4),
                               camera_tokens=camera_tokens)


def test_latent_rays_follow_the_camera_and_scale_with_the_latent():
    poses = camera_to_world(pan(CameraState(10, 10), 2, 0, 3))
    rays = latent_plucker(default_intrinsics(), poses, 8, 8)  # a 32 px frame in an 8x8 latent
    assert rays.shape == (6, 3, 8, 8)
    assert torch.allclose(rays[:3, 0], rays[:3, 2])  # a pan keeps the directions ...
    assert not torch.allclose(rays[3:, 0], rays[3:, 2])  # ... and moves the moments
    # the latent pixel (0, 0) covers frame pixels 0..3: its ray passes through pixel coordinate (2, 2)
    direction = rays[:3, 0, 0, 0]
    expected = torch.tensor([2 - 16, 2 - 16, 32], dtype=torch.float64)
    assert torch.allclose(direction, expected / expected.norm())
    with pytest.raises(ValueError, match="not a uniform scaling"):
        latent_plucker(default_intrinsics(), poses, 8, 4)


def test_a_fresh_encoder_changes_nothing_and_a_trained_one_steers_the_output(model):
    encoder = CameraEncoder.for_transformer(model, hidden_dim=16)
    x = torch.randn(1, 3, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    poses = camera_to_world(pan(CameraState(40, 40, yaw=0.3), 1.5, -0.5, 6))
    rays = latent_plucker(Intrinsics.centred(8, 8, 8.0), poses, 8, 8)[None].float()
    tokens = encoder(rays)
    assert tokens.shape == (1, 6 * 4, 24) and tokens.abs().max() == 0
    with torch.no_grad():
        assert torch.equal(run(model, x), run(model, x, tokens))
    # one optimiser step on the encoder alone (the transformer frozen) makes the camera matter
    optimiser = torch.optim.SGD(encoder.parameters(), lr=0.1)
    model.requires_grad_(False)
    loss = run(model, x, encoder(rays)).square().mean()
    loss.backward()
    optimiser.step()
    with torch.no_grad():
        assert not torch.allclose(run(model, x), run(model, x, encoder(rays)))


def test_the_encoder_saves_and_loads_in_diffusers_layout(model, tmp_path):
    encoder = CameraEncoder.for_transformer(model)
    with torch.no_grad():
        encoder.proj.weight.normal_()
    encoder.save_pretrained(tmp_path / "camera_encoder")
    loaded = CameraEncoder.from_pretrained(tmp_path / "camera_encoder")
    rays = torch.randn(2, 6, 3, 8, 8)
    assert loaded.config.patch_size == [1, 4, 4] or tuple(loaded.config.patch_size) == (1, 4, 4)
    assert torch.equal(loaded(rays), encoder(rays))


def test_wrong_shapes_are_named(model):
    encoder = CameraEncoder.for_transformer(model)
    with pytest.raises(ValueError, match="camera rays must be"):
        encoder(torch.zeros(1, 3, 2, 8, 8))
    x = torch.randn(1, 3, 3, 8, 8)
    with pytest.raises(ValueError, match="camera_tokens must be"):
        run(model, x, torch.zeros(1, 5, 24))
    assert math.isfinite(float(run(model, x).sum()))
