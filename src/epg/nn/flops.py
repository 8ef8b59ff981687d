"""Analytic compute counts from a model config (METHOD.md §2, GFLOPs column)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Compute:
    """Multiply-accumulates of one forward pass, split the way the paper's table and MFU need them."""

    linear_macs: float  # linear/conv layers over all tokens (adaLN on its single vector)
    attention_macs: float  # QKᵀ and AV matmuls

    @property
    def paper_gflops(self) -> float:
        """The paper's "GFLOPs" (DiT convention: MACs, attention matmuls excluded)."""
        return self.linear_macs / 1e9

    @property
    def forward_flops(self) -> float:
        """Real FLOPs of one forward pass: 2 × all MACs."""
        return 2.0 * (self.linear_macs + self.attention_macs)


def _vit_block(tokens: int, width: int, mlp_ratio: float) -> tuple[float, float]:
    linear = tokens * width * (3 * width + width + 2 * mlp_ratio * width)
    attention = 2.0 * tokens * tokens * width
    return linear, attention


def model_compute(img_size: int, patch: int, channels: int, enc_depth: int, enc_width: int, dec_depth: int = 0,
                  dec_width: int = 0, mlp_ratio: float = 4.0, proj_hidden: int = 0, proj_out: int = 0) -> Compute:
    """MACs of the encoder (+ decoder when dec_depth > 0, + projector when proj_hidden > 0)."""
    patches = (img_size // patch) ** 2
    tokens = patches + 2
    linear = float(patches * channels * patch * patch * enc_width)
    block_lin, block_att = _vit_block(tokens, enc_width, mlp_ratio)
    linear += enc_depth * block_lin
    attention = enc_depth * block_att
    if dec_depth:
        if dec_width != enc_width:
            linear += tokens * enc_width * dec_width
        dlin, datt = _vit_block(tokens, dec_width, mlp_ratio)
        skip = tokens * (dec_width + enc_width) * dec_width
        ada = enc_width * 6 * dec_width
        linear += dec_depth * (dlin + skip + ada)
        attention += dec_depth * datt
        linear += patches * dec_width * patch * patch * channels
    if proj_hidden:
        linear += enc_width * proj_hidden + proj_hidden * proj_hidden + proj_hidden * proj_out
    return Compute(linear, attention)
