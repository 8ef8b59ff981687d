"""Networks of METHOD.md §2, built from a ModelConfig."""

from __future__ import annotations

from epg.config import ModelConfig
from epg.nn.encoder import RCM, Encoder, Projector
from epg.nn.flops import Compute, model_compute
from epg.nn.generator import Generator

__all__ = ["RCM", "Compute", "Encoder", "Generator", "Projector", "build_generator", "build_rcm", "compute_of",
           "set_activation_checkpointing"]


def build_rcm(m: ModelConfig) -> RCM:
    """Stage-1 network (encoder + projector)."""
    return RCM(m.img_size, m.patch, m.channels, m.enc_depth, m.enc_width, m.enc_heads, m.proj_hidden, m.proj_out,
               m.mlp_ratio)


def build_generator(m: ModelConfig) -> Generator:
    """Stage-2 generator (encoder + decoder of the same depth)."""
    return Generator(m.img_size, m.patch, m.channels, m.enc_depth, m.enc_width, m.enc_heads, m.dec_width,
                     m.dec_heads, m.num_classes, m.dropout, m.mlp_ratio)


def compute_of(m: ModelConfig, stage: str) -> Compute:
    """Analytic MACs of the network a stage trains."""
    if stage == "pretrain":
        return model_compute(m.img_size, m.patch, m.channels, m.enc_depth, m.enc_width, mlp_ratio=m.mlp_ratio,
                             proj_hidden=m.proj_hidden, proj_out=m.proj_out)
    return model_compute(m.img_size, m.patch, m.channels, m.enc_depth, m.enc_width, m.enc_depth, m.dec_width,
                         m.mlp_ratio)


def set_activation_checkpointing(net: RCM | Generator, enabled: bool = True) -> None:
    """Recompute transformer-block activations in the backward pass (memory for the largest presets)."""
    net.encoder.checkpointing = enabled
