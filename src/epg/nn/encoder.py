"""The stage-1 network: ViT encoder E with CLS + TIME tokens, and the projector g (METHOD.md §2)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from epg.nn.denoiser import timestep_embedding
from epg.nn.layers import Block, GlobalBatchNorm1d


def sincos_positions(width: int, grid: int) -> torch.Tensor:
    """2-D sin-cos position code of a grid×grid patch grid (MAE / MoCo v3): a quarter of the channels each for
    sin and cos of the row and of the column, frequencies 1 … 1e-4; grid² × width, values in [−1, 1]."""
    if width % 4:
        raise ValueError(f"a sin-cos position code needs a width divisible by 4, not {width}")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    angles = [axis.flatten()[:, None] * omega[None] for axis in (rows, cols)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1).float()


class Encoder(nn.Module):
    """Plain ViT over tokens [CLS] [TIME] [patch_1 … patch_P], pre-LN blocks, final LayerNorm.

    `pos_init` "normal" is METHOD.md §2 (trunc-normal 0.02); "sincos" starts the patch positions from the 2-D
    sin-cos code instead (still learnt; CLS and TIME stay trunc-normal): at 0.02 the positions are ~1/40 of the
    patch tokens' size, so a new encoder is close to a bag of patches."""

    def __init__(self, img_size: int, patch: int, channels: int, depth: int, width: int, heads: int,
                 mlp_ratio: float = 4.0, pos_init: str = "normal"):
        super().__init__()
        if img_size % patch:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch}")
        self.width = width
        self.num_patches = (img_size // patch) ** 2
        self.patch_embed = nn.Conv2d(channels, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + self.num_patches, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.checkpointing = False  # recompute block activations in backward (large presets)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if pos_init == "sincos":
            with torch.no_grad():
                self.pos_embed[0, 2:] = sincos_positions(width, img_size // patch)
        elif pos_init != "normal":
            raise ValueError(f"pos_init must be 'normal' or 'sincos', not {pos_init!r}")
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cls_add: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return (final-LN tokens, list of every block's output) for input c_in·x_σ and c_noise."""
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        if cls_add is not None:
            cls = cls + cls_add[:, None]
        time = timestep_embedding(c_noise, self.width)[:, None].to(patches.dtype)
        h = torch.cat([cls.to(patches.dtype), time, patches], dim=1) + self.pos_embed.to(patches.dtype)
        outs = []
        for blk in self.blocks:
            h = checkpoint(blk, h, use_reentrant=False) if self.checkpointing and torch.is_grad_enabled() else blk(h)
            outs.append(h)
        return self.norm(h), outs

    def features(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """h = LN(CLS): the representation used by the consistency loss and the k-NN probe."""
        return self(x, c_noise)[0][:, 0]


class Projector(nn.Module):
    """g: Linear → BN → ReLU → Linear → BN → ReLU → Linear, all without bias, no final BN (METHOD.md §2)."""

    def __init__(self, in_dim: int, hidden: int = 4096, out_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False), GlobalBatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False), GlobalBatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim, bias=False),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class RCM(nn.Module):
    """Stage-1 network W = encoder E + projector g; `features` = LN(CLS), `project` = g(LN(CLS))."""

    def __init__(self, img_size: int, patch: int, channels: int, depth: int, width: int, heads: int,
                 proj_hidden: int = 4096, proj_out: int = 256, mlp_ratio: float = 4.0, pos_init: str = "normal"):
        super().__init__()
        self.encoder = Encoder(img_size, patch, channels, depth, width, heads, mlp_ratio, pos_init)
        self.projector = Projector(width, proj_hidden, proj_out)
        self._init_mocov3(patch, channels)

    def _init_mocov3(self, patch: int, channels: int) -> None:
        # MoCo v3 init: xavier-uniform Linear layers, qkv as three D×D matrices, patch embed over fan-in C·p².
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name.endswith("attn.qkv"):
                    d = m.weight.shape[1]
                    nn.init.uniform_(m.weight, -math.sqrt(6.0 / (2 * d)), math.sqrt(6.0 / (2 * d)))
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        pe = self.encoder.patch_embed
        bound = math.sqrt(6.0 / (channels * patch * patch + pe.weight.shape[0]))
        nn.init.uniform_(pe.weight, -bound, bound)
        nn.init.zeros_(pe.bias)

    def features(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """h = LN(CLS) of the encoder (the projector's input)."""
        return self.encoder.features(x, c_noise)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """g(LN(CLS)): the projector output used by the contrastive loss."""
        return self.projector(self.features(x, c_noise))
