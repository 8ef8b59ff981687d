"""Networks of METHOD.md §2, built from a ModelConfig, and the network as a denoiser (`epg.nn.denoiser`)."""

from __future__ import annotations

from epg.config import ModelConfig
from epg.nn.denoiser import autocast, consistency_function, encode, x0_prediction
from epg.nn.encoder import RCM, Encoder, Projector
from epg.nn.flops import Compute, model_compute
from epg.nn.generator import Generator

__all__ = ["RCM", "Compute", "Encoder", "Generator", "Projector", "autocast", "build_generator", "build_rcm",
           "consistency_function", "encode", "generator_compute", "rcm_compute", "set_activation_checkpointing",
           "x0_prediction"]


def build_rcm(m: ModelConfig) -> RCM:
    """Stage-1 network (encoder + projector)."""
    return RCM(m.img_size, m.patch, m.channels, m.enc_depth, m.enc_width, m.enc_heads, m.proj_hidden, m.proj_out,
               m.mlp_ratio, m.pos_init)


def build_generator(m: ModelConfig) -> Generator:
    """Stage-2 generator (encoder + decoder of the same depth)."""
    return Generator(m.img_size, m.patch, m.channels, m.enc_depth, m.enc_width, m.enc_heads, m.dec_width,
                     m.dec_heads, m.num_classes, m.dropout, m.mlp_ratio, m.pos_init)


def rcm_compute(m: ModelConfig) -> Compute:
    """Analytic MACs of the stage-1 network (encoder + projector)."""
    return model_compute(m.img_size, m.patch, m.channels, m.enc_depth, m.enc_width, mlp_ratio=m.mlp_ratio,
                         proj_hidden=m.proj_hidden, proj_out=m.proj_out)


def generator_compute(m: ModelConfig) -> Compute:
    """Analytic MACs of the stage-2 generator (encoder + decoder)."""
    return model_compute(m.img_size, m.patch, m.channels, m.enc_depth, m.enc_width, m.enc_depth, m.dec_width,
                         m.mlp_ratio)


def set_activation_checkpointing(net: RCM | Generator, enabled: bool = True) -> None:
    """Recompute transformer-block activations in the backward pass (memory for the largest presets)."""
    net.encoder.checkpointing = enabled
