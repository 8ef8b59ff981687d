"""Stage-1 view augmentations (METHOD.md §3 item 7): shapes, determinism, per-view probabilities, colour ops."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from epg.objectives.augment import ViewSpec, augment_view, grey_jitter, random_erase, random_resized_crop_flip
from epg.rng import SampleRNG

sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import _images, tiny_cfg, tiny_objective  # noqa: E402

# The paper's views (the PretrainConfig defaults); the CPU presets turn blur and solarize off (presets.py).
PAPER_VIEWS = {"pretrain.blur_p1": 1.0, "pretrain.blur_p2": 0.1, "pretrain.solarize_p2": 0.2,
               "pretrain.crop_min_scale": 0.08}


def _views():
    p = tiny_cfg(**PAPER_VIEWS).pretrain
    return (ViewSpec("view1", p.blur_p1, 0.0, p.crop_min_scale), ViewSpec("view2", p.blur_p2, p.solarize_p2,
                                                                             p.crop_min_scale))


def test_objective_view_specs_follow_the_paper():
    from epg.config import PretrainConfig

    assert {k: getattr(PretrainConfig(), k.split(".")[1]) for k in PAPER_VIEWS} == PAPER_VIEWS
    obj = tiny_objective(**PAPER_VIEWS)
    v1, v2 = obj.views
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert (v1.jitter_p, v1.gray_p) == (0.8, 0.2) and v1.name != v2.name


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_shapes_range_and_determinism(channels):
    img = _images(6, channels)
    pos = torch.arange(10, 16)
    for spec in _views():
        a = augment_view(img, SampleRNG(7, 3, pos), spec)
        assert a.shape == img.shape and a.dtype == torch.float32
        assert a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, augment_view(img, SampleRNG(7, 3, pos), spec))
        b = augment_view(img, SampleRNG(7, 4, pos), spec)
        assert all(not torch.allclose(a[i], b[i]) for i in range(6))
        c = augment_view(img, SampleRNG(8, 3, pos), spec)
        assert not torch.allclose(a, c)
    v1, v2 = _views()
    assert not torch.allclose(augment_view(img, SampleRNG(7, 3, pos), v1), augment_view(img, SampleRNG(7, 3, pos), v2))


def test_augment_independent_of_batch_split():
    """augment.py's promise: a sample's view depends only on (seed, step, position), not on its batch-mates."""
    img = _images(16, 3, seed=1)
    v1 = _views()[0]
    full = augment_view(img, SampleRNG(1, 5, torch.arange(16)), v1)
    worst = 0.0
    for i in range(16):
        one = augment_view(img[i:i + 1], SampleRNG(1, 5, torch.tensor([i])), v1)
        worst = max(worst, (one[0] - full[i]).abs().max().item())
    assert worst < 1e-5, (
        f"a view changes by {worst:.2e} with its batch-mates: gaussian_blur's kernel radius is ceil(3·max σ) over "
        "the batch (src/epg/objectives/augment.py), so truncation depends on the other samples")


def test_solarize_view2_about_20_percent_view1_never():
    n = 400
    img = torch.full((n, 1, 32, 32), 230, dtype=torch.uint8)  # 0.902: crop, flip and blur keep it constant
    rng = SampleRNG(11, 0, torch.arange(n))
    v1, v2 = _views()
    for spec, lo, hi in ((v1, 0.0, 0.0), (v2, 0.14, 0.26)):
        out = augment_view(img, rng, spec)
        means = out.mean(dim=(1, 2, 3))
        bright = (means - 230 / 255).abs() < 1e-5
        solar = (means - (1 - 230 / 255)).abs() < 1e-5
        assert bool((bright | solar).all())
        assert lo <= solar.float().mean().item() <= hi, (spec.name, solar.float().mean().item())


def test_blur_always_on_view1_rarely_on_view2():
    n = 300
    g = torch.Generator().manual_seed(3)
    img = torch.randint(0, 110, (n, 1, 32, 32), dtype=torch.uint8, generator=g)  # < 0.5: solarise is a no-op
    rng = SampleRNG(5, 2, torch.arange(n))
    v1, v2 = _views()
    for spec, lo, hi in ((v1, 0.9, 1.0), (v2, 0.04, 0.16)):
        plain = augment_view(img, rng, ViewSpec(spec.name, 0.0, 0.0, spec.crop_min_scale))
        out = augment_view(img, rng, spec)
        blurred = (out - plain).flatten(1).abs().amax(1) > 1e-5
        assert lo <= blurred.float().mean().item() <= hi, (spec.name, blurred.float().mean().item())


def test_colour_ops_are_noops_on_one_channel():
    img = _images(8, 1, seed=4)
    rng = SampleRNG(2, 9, torch.arange(8))
    crop = random_resized_crop_flip(img.float() / 255.0, rng, "view1", 0.3)
    out = augment_view(img, rng, ViewSpec("view1", 0.0, 0.0, 0.3, jitter_p=1.0, gray_p=1.0))
    assert torch.equal(out, crop.clamp(0, 1))
    # the crop itself does something (so the equality above is not vacuous)
    assert not torch.allclose(crop, img.float() / 255.0)


def test_rgb_colour_jitter_and_grayscale_change_colours():
    n = 16
    img = _images(n, 3, seed=5)
    rng = SampleRNG(2, 9, torch.arange(n))
    plain = augment_view(img, rng, ViewSpec("v", 0.0, 0.0, 0.3, jitter_p=0.0, gray_p=0.0))
    jitter = augment_view(img, rng, ViewSpec("v", 0.0, 0.0, 0.3, jitter_p=1.0, gray_p=0.0))
    gray = augment_view(img, rng, ViewSpec("v", 0.0, 0.0, 0.3, jitter_p=0.0, gray_p=1.0))
    assert all((jitter[i] - plain[i]).abs().mean() > 1e-3 for i in range(n))
    # jitter changes the colour balance, not only the overall intensity
    ratio = lambda x: x.mean(dim=(2, 3)) / x.mean(dim=(1, 2, 3))[:, None]  # noqa: E731
    assert (ratio(jitter) - ratio(plain)).abs().amax(1).min() > 1e-3
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    assert not torch.allclose(plain[:, 0], plain[:, 1])




# ------------------------------------------------ grey jitter and random erasing (CPU presets; off in the paper)


def test_extra_ops_are_wired_from_the_config_and_off_in_the_paper():
    v1, v2 = tiny_objective(**{"pretrain.grey_jitter_p": 0.7, "pretrain.grey_strength": 0.5,
                               "pretrain.erase_p": 0.3}).views
    for v in (v1, v2):
        assert (v.grey_jitter_p, v.grey_strength, v.erase_p) == (0.7, 0.5, 0.3)
    from epg.presets import get_preset

    p = get_preset("rcm-b-16-in256", "pretrain").pretrain
    assert (p.grey_jitter_p, p.erase_p) == (0.0, 0.0)


def test_grey_jitter_brightness_and_contrast_by_hand():
    x = torch.tensor([0.2, 0.4, 0.6, 0.6]).view(1, 1, 2, 2)
    # u = (0.75, 0.5), strength 0.4: brightness × 1.2, contrast × 1.0
    torch.testing.assert_close(grey_jitter(x, torch.tensor([[0.75, 0.5]]), 0.4), x * 1.2)
    # u = (0.5, 1.0): brightness × 1, contrast × 1.4 about the mean 0.45
    torch.testing.assert_close(grey_jitter(x, torch.tensor([[0.5, 1.0]]), 0.4), 0.45 + 1.4 * (x - 0.45))


def test_grey_jitter_applies_to_one_channel_with_its_probability():
    n = 400
    img = torch.full((n, 1, 32, 32), 100, dtype=torch.uint8)  # constant: crop, flip and contrast keep it
    rng = SampleRNG(11, 0, torch.arange(n))
    plain = augment_view(img, rng, ViewSpec("v", 0.0, 0.0, 0.3))
    out = augment_view(img, rng, ViewSpec("v", 0.0, 0.0, 0.3, grey_jitter_p=0.5))
    changed = (out - plain).flatten(1).abs().amax(1) > 1e-5
    assert 0.4 <= changed.float().mean().item() <= 0.6  # binomial std 0.025
    ratio = out.mean(dim=(1, 2, 3))[changed] / (100 / 255)
    assert ratio.min() >= 0.6 - 1e-5 and ratio.max() <= 1.4 + 1e-5 and ratio.std() > 0.15  # U(0.6, 1.4): 0.23
    rgb = _images(8, 3, seed=2)  # RGB views use the paper's colour jitter only
    spec = ViewSpec("v", 0.0, 0.0, 0.3, jitter_p=0.0, gray_p=0.0)
    rng = SampleRNG(11, 0, torch.arange(8))
    assert torch.equal(augment_view(rgb, rng, spec), augment_view(rgb, rng, ViewSpec(
        "v", 0.0, 0.0, 0.3, jitter_p=0.0, gray_p=0.0, grey_jitter_p=1.0)))


def test_random_erase_rectangle_by_hand_and_probability():
    x = torch.ones(1, 1, 32, 32)
    # area 0.02, ratio 0.3: h = round(√(0.02/0.3)·32) = 8, w = round(√(0.006)·32) = 2, at the top-left corner
    out = random_erase(x, torch.tensor([[0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(out[0, 0, :8, :2], torch.zeros(8, 2)) and int((out == 0).sum()) == 16
    # u just below 1 puts the largest square-ish patch at the bottom-right corner
    out = random_erase(x, torch.tensor([[0.999, 0.5, 0.999, 0.999]]))
    side = round(math.sqrt(0.02 + 0.31 * 0.999) * 32)
    assert int((out == 0).sum()) == side * side and float(out[0, 0, -1, -1]) == 0.0
    n = 400
    img = torch.full((n, 1, 32, 32), 200, dtype=torch.uint8)
    rng = SampleRNG(3, 1, torch.arange(n))
    erased = (augment_view(img, rng, ViewSpec("v", 0.0, 0.0, 0.3, erase_p=0.5)) == 0).flatten(1).any(1)
    assert 0.4 <= erased.float().mean().item() <= 0.6
    assert not (augment_view(img, rng, ViewSpec("v", 0.0, 0.0, 0.3)) == 0).any()
