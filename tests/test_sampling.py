import pytest
import torch

from streamgen.sampling import EulerSampler, FewStepSampler


def test_self_forcing_steps_are_warped_with_shift_5():
    sigmas = FewStepSampler().sigmas()
    assert torch.allclose(sigmas * 1000, torch.tensor([1000.0, 937.5, 833.3333, 625.0], dtype=torch.float64))


@pytest.mark.parametrize("sampler", [FewStepSampler(), EulerSampler(num_inference_steps=5)])
def test_an_exact_flow_predictor_recovers_the_clean_sample(sampler):
    x0 = torch.randn(1, 3, 2, 4, 4)
    seen = []

    def oracle(x, t):
        # For x_t = (1 - s) x0 + s n the flow is n - x0 = (x_t - x0) / s.
        s = t / 1000
        seen.append(t)
        return (x - x0) / s

    out = sampler.sample(oracle, torch.randn_like(x0), torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-5)
    assert seen[0] == 1000.0 and len(seen) == len(sampler.sigmas()) - (0 if isinstance(sampler, FewStepSampler) else 1)


def test_bad_step_lists_are_rejected():
    with pytest.raises(ValueError, match="timesteps"):
        FewStepSampler(timesteps=(1000.0, 0.0))
    with pytest.raises(ValueError, match="num_inference_steps"):
        EulerSampler(num_inference_steps=0)


def test_noise_is_drawn_where_the_generator_lives_and_moved_to_the_device():
    from streamgen.sampling import draw_noise

    drawn = draw_noise((2, 3), torch.Generator().manual_seed(5), "meta")
    assert drawn.device.type == "meta" and drawn.shape == (2, 3)  # a CPU generator serves any device
    assert torch.equal(draw_noise((2, 3), torch.Generator().manual_seed(5), "cpu"),
                       torch.randn((2, 3), generator=torch.Generator().manual_seed(5)))
    assert draw_noise((4,), None, "cpu", torch.float64).dtype == torch.float64
