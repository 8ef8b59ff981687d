"""The stage-2 generator: pretrained encoder E + a random adaLN-Zero decoder with U-ViT skips (METHOD.md §2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from epg.nn.denoiser import timestep_embedding
from epg.nn.encoder import Encoder
from epg.nn.layers import Attention, Mlp


class SkipFuse(nn.Module):
    """U-ViT long skip: x = LN(Linear(cat[x, skip]))."""

    def __init__(self, dec_width: int, enc_width: int):
        super().__init__()
        self.linear = nn.Linear(dec_width + enc_width, dec_width)
        self.norm = nn.LayerNorm(dec_width)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(torch.cat([x, skip.to(x.dtype)], dim=-1)))


class DecoderBlock(nn.Module):
    """DiT adaLN-Zero block conditioned on c (encoder width); dropout on the attention output (CM only)."""

    def __init__(self, dim: int, heads: int, cond_dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, proj_dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class Generator(nn.Module):
    """F(c_in·x, c_noise, y): encoder E, then a decoder of the same depth fed by E's block outputs in reverse."""

    def __init__(self, img_size: int, patch: int, channels: int, enc_depth: int, enc_width: int, enc_heads: int,
                 dec_width: int, dec_heads: int, num_classes: int = 0, dropout: float = 0.0,
                 mlp_ratio: float = 4.0, pos_init: str = "normal"):
        super().__init__()
        self.patch, self.channels, self.grid = patch, channels, img_size // patch
        self.num_classes = num_classes
        self.encoder = Encoder(img_size, patch, channels, enc_depth, enc_width, enc_heads, mlp_ratio, pos_init)
        # The last row is the null label used for classifier-free guidance.
        self.class_embed = nn.Embedding(num_classes + 1, enc_width) if num_classes > 0 else None
        self.enc_to_dec = nn.Linear(enc_width, dec_width) if enc_width != dec_width else nn.Identity()
        self.skips = nn.ModuleList(SkipFuse(dec_width, enc_width) for _ in range(enc_depth))
        self.blocks = nn.ModuleList(DecoderBlock(dec_width, dec_heads, enc_width, mlp_ratio, dropout)
                                    for _ in range(enc_depth))
        self.head_norm = nn.LayerNorm(dec_width)
        self.head = nn.Linear(dec_width, patch * patch * channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # Xavier on every Linear, zero adaLN modulation and head (adaLN-Zero); the encoder is then
        # usually overwritten by the stage-1 weights.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)

    def conditioning(self, c_noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """c = sinusoid(c_noise) + class_embedding(y): the decoder's adaLN input."""
        c = timestep_embedding(c_noise, self.encoder.width)
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels (num_classes = null label)")
            c = c + self.class_embed(labels)
        return c

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        c = self.conditioning(c_noise, labels)
        cls_add = self.class_embed(labels) if self.class_embed is not None else None
        h, enc_outs = self.encoder(x, c_noise, cls_add)
        h = self.enc_to_dec(h)
        recompute = self.encoder.checkpointing and torch.is_grad_enabled()
        for i, (fuse, blk) in enumerate(zip(self.skips, self.blocks)):
            h = fuse(h, enc_outs[-1 - i])
            h = checkpoint(blk, h, c, use_reentrant=False) if recompute else blk(h, c)
        out = self.head(self.head_norm(h[:, 2:]))
        return self.unpatchify(out)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P, p²·C) patch tokens → (B, C, H, W) image."""
        b, g, p, c = tokens.shape[0], self.grid, self.patch, self.channels
        x = tokens.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p).float()
