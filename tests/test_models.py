"""Model zoo (METHOD.md §2): parameter counts, GFLOPs, initialisation, checkpoints and config handling."""

import pytest
import torch

from epg.config import ConfigError, config_from_dict
from epg.engine import checkpoint as ck
from epg.nn import build_generator, build_rcm
from epg.presets import get_preset
from epg.stages import stage_of

# Exact counts of the authors' networks at each preset's configuration (decoder qkv without bias included).
PAPER_PARAMS = {
    "rcm-b-16-in256": 106_805_760, "rcm-l-16-in256": 224_581_632, "epg-l-16-in256": 540_215_040,
    "epg-xl-16-in256": 582_986_064, "epg-xxl-16-in256": 788_921_472, "epg-g-16-in256": 1_391_899_008,
    "epg-l-32-in512": 544_935_936,
}


def _params(name: str) -> int:
    cfg = get_preset(name)
    with torch.device("meta"):
        net = build_rcm(cfg.model) if cfg.stage == "pretrain" else build_generator(cfg.model)
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_parameter_counts(name):
    assert _params(name) == PAPER_PARAMS[name]


def test_rcm_l_32_parameter_count():
    # Not released; same network as RCM-L/16 with a 32-px patch embedding: 3·(32² − 16²)·1024 more weights.
    assert _params("rcm-l-32-in512") == 224_581_632 + 3 * (32 * 32 - 16 * 16) * 1024


def test_no_attention_has_a_qkv_bias():
    cfg = get_preset("fmnist-tiny")
    names = [n for n, _ in build_generator(cfg.model).named_parameters()] + \
            [n for n, _ in build_rcm(cfg.model).named_parameters()]
    assert any(n.endswith("attn.qkv.weight") for n in names)
    assert not any(n.endswith("attn.qkv.bias") for n in names)


def test_projector_768_option():
    cfg = get_preset("rcm-b-16-in256", overrides={"model.proj_out": 768})
    with torch.device("meta"):
        n = sum(p.numel() for p in build_rcm(cfg.model).parameters()) / 1e6
    assert abs(n - 108.9) < 0.1


@pytest.mark.parametrize("name,gflops,tol", [("epg-l-16-in256", 113, 2), ("epg-xxl-16-in256", 176, 3),
                                             ("epg-g-16-in256", 321, 5), ("epg-xl-16-in256", 128, 2),
                                             ("epg-l-32-in512", 114, 2)])
def test_paper_gflops(name, gflops, tol):
    cfg = get_preset(name)
    assert abs(stage_of(cfg).compute(cfg.model).paper_gflops - gflops) <= tol


def test_xxl_gflops_split():
    # encoder 21.9 G + decoder 153 G (+ ~1 G of patch embed, projections and head)
    from epg.nn.flops import model_compute
    enc = model_compute(256, 16, 3, 12, 768).paper_gflops
    assert abs(enc - 21.9) < 0.2


def _tiny(stage="diffusion", **over):
    base = {"model.enc_depth": 2, "model.enc_width": 32, "model.enc_heads": 2, "model.dec_width": 48,
            "model.dec_heads": 2, "model.proj_hidden": 64, "model.proj_out": 16}
    base.update(over)
    return get_preset("fmnist-tiny", stage, base)


def test_zero_initialised_generator_outputs_zeros_then_learns():
    torch.manual_seed(0)
    cfg = _tiny()
    gen = build_generator(cfg.model)
    x = torch.randn(4, 1, 32, 32)
    t = torch.randn(4)
    y = torch.tensor([0, 1, 2, 10])  # 10 = the null label
    assert torch.equal(gen(x, t, y), torch.zeros_like(x))
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-3)
    ((gen(x, t, y) - x) ** 2).mean().backward()
    opt.step()
    assert gen(x, t, y).abs().max() > 0


def test_generator_shapes_rgb_and_unconditional():
    cfg = _tiny(**{"model.channels": 3, "model.num_classes": 0})
    gen = build_generator(cfg.model)
    assert gen.class_embed is None
    out = gen(torch.randn(2, 3, 32, 32), torch.zeros(2))
    assert out.shape == (2, 3, 32, 32)


def test_unpatchify_inverts_patchify():
    cfg = _tiny(**{"model.channels": 3})
    gen = build_generator(cfg.model)
    img = torch.randn(2, 3, 32, 32)
    p = 4
    tokens = img.reshape(2, 3, 8, p, 8, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 64, p * p * 3)
    assert torch.equal(gen.unpatchify(tokens), img)


def test_save_load_roundtrip_is_bit_identical(tmp_path):
    torch.manual_seed(1)
    cfg = _tiny()
    gen = build_generator(cfg.model)
    torch.nn.init.normal_(gen.head.weight)
    ck.write_checkpoint(tmp_path / "step-00000001", cfg, {"model": gen.state_dict()})
    loaded, cfg2, _ = ck.load_network(tmp_path / "step-00000001")
    x, t, y = torch.randn(3, 1, 32, 32), torch.randn(3), torch.tensor([1, 2, 3])
    gen.eval()
    assert torch.equal(gen(x, t, y), loaded(x, t, y))
    assert cfg2.to_dict() == cfg.to_dict()


def test_wrong_shape_checkpoint_names_the_tensors(tmp_path):
    small = _tiny()
    wide = _tiny(**{"model.dec_width": 64})
    ck.write_checkpoint(tmp_path / "step-00000001", wide, {"model": build_generator(wide.model).state_dict()})
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_state_strict(build_generator(small.model), ck.read_tensors(tmp_path / "step-00000001", "model"),
                             "wide checkpoint")
    assert "enc_to_dec.weight: checkpoint (64, 32) vs model (48, 32)" in str(err.value)
    assert "shape mismatch" in str(err.value)


def test_stage1_encoder_loads_into_generator_and_drops_projector(tmp_path):
    pre = _tiny("pretrain")
    rcm = build_rcm(pre.model)
    ck.write_checkpoint(tmp_path / "step-00000005", pre, {"model": rcm.state_dict()})
    gen = build_generator(_tiny().model)
    keys = ck.load_pretrained_encoder(gen, tmp_path / "step-00000005")
    assert all(not k.startswith("projector") for k in keys)
    for k, v in rcm.encoder.state_dict().items():
        assert torch.equal(gen.encoder.state_dict()[k], v)


def test_stage2_checkpoint_refused_as_init(tmp_path):
    cfg = _tiny()
    ck.write_checkpoint(tmp_path / "step-00000001", cfg, {"model": build_generator(cfg.model).state_dict()})
    with pytest.raises(ck.CheckpointError, match="pretrain"):
        ck.load_pretrained_encoder(build_generator(cfg.model), tmp_path / "step-00000001")


def test_truncated_checkpoint_is_detected(tmp_path):
    cfg = _tiny()
    path = ck.write_checkpoint(tmp_path / "step-00000001", cfg, {"model": build_generator(cfg.model).state_dict()})
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ck.CheckpointError, match="truncated or corrupt"):
        ck.verify_checkpoint(path)


def test_config_overrides_and_suggestions():
    cfg = get_preset("fmnist-tiny", overrides={"lr": "3e-4", "model.dec_width": "64", "optim.betas": "0.9,0.95"})
    assert cfg.optim.lr == 3e-4 and cfg.model.dec_width == 64 and cfg.optim.betas == (0.9, 0.95)
    with pytest.raises(ConfigError, match="did you mean 'model.enc_depth'"):
        get_preset("fmnist-tiny", overrides={"model.enc_dept": "3"})
    with pytest.raises(ConfigError, match="ambiguous"):
        get_preset("fmnist-tiny", overrides={"p_mean": "0"})  # diffusion.p_mean and consistency.p_mean
    assert get_preset("fmnist-tiny", overrides={"steps": "7"}).train.steps == 7  # alias
    with pytest.raises(ConfigError, match="did you mean 'fmnist-tiny'"):
        get_preset("fmnist-tinny")
    with pytest.raises(ConfigError, match="not one of"):
        get_preset("fmnist-tiny", overrides={"train.precision": "fp8"})


def test_the_cpu_diffusion_recipe_trains_at_batch_32_over_twice_the_steps():
    # measured: presets.CPU_RECIPES["diffusion"] (FID: the lr1e-3-b32 variant of pretrain_vs_scratch.md; time:
    # benchmarks/results/batch_step_time*.md)
    for preset, steps in (("fmnist-tiny", 4000), ("fmnist-small", 12000)):
        dm = get_preset(preset, "diffusion")
        assert (dm.train.global_batch, dm.train.steps, dm.optim.warmup_steps) == (32, steps, steps // 20)
        assert get_preset(preset, "pretrain").train.global_batch == 64  # stage 1 keeps its own (stage1_recipe.md)
    assert get_preset("fmnist-tiny", "diffusion", {"train.global_batch": "64"}).train.global_batch == 64


def test_config_json_roundtrip():
    cfg = get_preset("epg-xl-16-in256")
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    bad = cfg.to_dict()
    bad["model"]["depthh"] = 3
    with pytest.raises(ConfigError, match="unknown keys"):
        config_from_dict(bad)


def test_sincos_positions_hand_values():
    from epg.nn.encoder import sincos_positions

    code = sincos_positions(8, 3)  # 9 patches × (sin row, cos row, sin col, cos col) at frequencies 1 and 0.01
    assert code.shape == (9, 8)
    assert torch.allclose(code[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))  # patch (0, 0)
    r, c = torch.tensor([1.0, 0.01]), torch.tensor([2.0, 0.02])  # row 1, column 2 at both frequencies
    assert torch.allclose(code[1 * 3 + 2], torch.cat([r.sin(), r.cos(), c.sin(), c.cos()]), atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(6, 3)


@pytest.mark.parametrize("stage", ["pretrain", "diffusion"])
def test_pos_init_sincos_reaches_both_networks_and_keeps_cls_time(stage):
    from epg.nn.encoder import sincos_positions

    cfg = _tiny(**{"model.pos_init": "sincos"})
    torch.manual_seed(0)
    net = build_rcm(cfg.model) if stage == "pretrain" else build_generator(cfg.model)
    pos = net.encoder.pos_embed.detach()[0]
    assert torch.equal(pos[2:], sincos_positions(cfg.model.enc_width, cfg.model.img_size // cfg.model.patch))
    torch.manual_seed(0)
    paper = _tiny(**{"model.pos_init": "normal"}).model  # METHOD.md §2 (the CPU presets use sincos)
    default = build_rcm(paper) if stage == "pretrain" else build_generator(paper)
    # CLS and TIME positions are drawn exactly as under the paper's init; the code is learnt (a Parameter).
    assert torch.equal(pos[:2], default.encoder.pos_embed.detach()[0, :2])
    assert net.encoder.pos_embed.requires_grad
    assert default.encoder.pos_embed.detach()[0, 2:].std() < 0.03
    with pytest.raises(ConfigError, match="model.pos_init"):
        _tiny(**{"model.pos_init": "sin-cos"})
    assert get_preset("fmnist-tiny").model.pos_init == "sincos"
    assert get_preset("epg-l-16-in256").model.pos_init == "normal"
