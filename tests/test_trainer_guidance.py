"""One Φ for a CFG range: per-pair guidance drawn from the range, carried by the pairs into the
teacher and the student, part of the cache key, and the report at both ends and the middle."""

import pytest
import torch

from comfyui_dyweight.coefficients import edm_sigmas
from comfyui_dyweight.trainer import DistillConfig, ModelSource, distill
from comfyui_dyweight.trainer.analytic import GaussianMixture
from comfyui_dyweight.trainer.teachers import sample_heun

SPAN = (1.5, 6.0)
SETTINGS = DistillConfig(nfe=[3], teacher_steps=12, iterations=30, batch_size=8, sampling_batch_size=8)


def karras(steps):
    return edm_sigmas(steps, 0.002, 80.0, 7.0, to_zero=True)


@pytest.fixture(scope="module")
def guided():
    """x0 = uncond + g·(cond − uncond) over two mixtures: classifier-free guidance with exact parts."""
    cond = GaussianMixture.seeded(dim=4, components=3, std=0.5, seed=1)
    uncond = GaussianMixture.seeded(dim=4, components=3, std=0.5, seed=2)
    calls = []

    def denoise(x, sigma, guidance=None):
        calls.append(guidance)
        scale = guidance.to(x).reshape(-1, 1)
        low = uncond.denoise(x, sigma)
        return low + scale * (cond.denoise(x, sigma) - low)

    denoise.calls = calls
    return denoise


def source(denoise, span=SPAN):
    noise = 80.0 * torch.randn(40, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return ModelSource(denoise, noise, karras, cache_key={"model": "guided mixtures"}, guidance=span)


def test_pairs_carry_their_guidance_into_the_teacher_and_the_report(guided, tmp_path):
    result = distill(source(guided), SETTINGS, cache_dir=tmp_path, progress=lambda event: None)
    pairs = result.pairs
    assert pairs.guidance.shape == (40,) and pairs.guidance.unique().numel() == 40
    assert SPAN[0] <= float(pairs.guidance.min()) and float(pairs.guidance.max()) <= SPAN[1]
    # the teacher ran each pair at its own guidance: a plain loop, one pair at a time
    for index in (0, 17, 39):
        scale = pairs.guidance[index:index + 1]
        expected = sample_heun(lambda x, sigma: guided(x, sigma, guidance=scale), pairs.noise[index:index + 1],
                               karras(12))
        assert torch.allclose(pairs.target[index:index + 1], expected, atol=1e-10), index
    (row,) = result.table
    assert [point["guidance"] for point in row["guidance"]] == [1.5, 3.75, 6.0]
    assert all(point["rmse"] <= point["init"] * 1.5 for point in row["guidance"])
    # the ends are evaluated against a teacher run at that fixed guidance: a constant scale reached the model
    assert any(g is not None and g.numel() > 1 and bool((g == 6.0).all()) for g in guided.calls)

    narrower = distill(source(guided, (1.5, 5.0)), SETTINGS.with_given(iterations=1), cache_dir=tmp_path,
                       progress=lambda event: None)
    assert not narrower.timings["teacher_cache_hit"]  # the range is part of the pairs' key
    assert len(list(tmp_path.glob("pairs-*.safetensors"))) == 2
    again = distill(source(guided), SETTINGS.with_given(iterations=1), cache_dir=tmp_path, progress=lambda event: None)
    assert again.timings["teacher_cache_hit"] and torch.equal(again.pairs.guidance, pairs.guidance)
