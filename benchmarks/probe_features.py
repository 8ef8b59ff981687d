"""Which feature of a stage-1 encoder the k-NN probe should read (issue #15: "check the probe itself").

The product's probe reads LN(CLS) at σ_min (epg.metrics.knn). This asks whether another readout of the same encoder
— the mean of the patch tokens, the time token, the projector's output, the CLS token of an earlier block, CLS and
patch mean together — holds a better class signal that LN(CLS) hides. Same images (5 000 train / 1 000 test), the
same noise (σ_min, seeds 0 / 1) and the same weighted 20-NN cosine vote as the product's probe; raw pixels beside.

    python benchmarks/probe_features.py random runs/stage1_long_v2/checkpoints/step-00002000 \
        runs/pretrain_vs_scratch_v3/pretrain-doses/step-00001000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from results_io import write_results  # noqa: E402

from epg.engine.checkpoint import load_network  # noqa: E402
from epg.metrics.knn import KnnProbe, knn_accuracy  # noqa: E402
from epg.nn import build_rcm  # noqa: E402
from epg.nn.denoiser import c_in, c_noise  # noqa: E402
from epg.noise import add_noise  # noqa: E402
from epg.pixels import normalize  # noqa: E402
from epg.presets import get_preset  # noqa: E402

RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def readouts(net: torch.nn.Module, cfg, images: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Every readout of the encoder for `images` noised to σ_min as the probe does (tokens: CLS, time, patches)."""
    s = cfg.noise.sigma_min * cfg.sigma_shift
    gen, out = torch.Generator().manual_seed(seed), {}
    for chunk in images.split(500):
        x = add_noise(normalize(chunk, cfg.noise.normalization), s, torch.randn(chunk.shape, generator=gen))
        sig = torch.full((x.shape[0],), s)
        tokens, blocks = net.encoder(c_in(sig.view(-1, 1, 1, 1), cfg.noise.sigma_data) * x, c_noise(sig))
        cls, patches = tokens[:, 0], tokens[:, 2:].mean(1)
        found = {"LN(CLS) (the probe)": cls, "mean of LN(patch tokens)": patches, "LN(time token)": tokens[:, 1],
                 "projector g(LN(CLS))": net.projector(cls),
                 "CLS after the last block, before LN": blocks[-1][:, 0]}
        if len(blocks) > 1:
            found["CLS after the second-last block"] = blocks[-2][:, 0]
        found["LN(CLS) ⊕ mean of patches (each unit-norm)"] = torch.cat(
            [F.normalize(cls, dim=-1), F.normalize(patches, dim=-1)], 1)
        for k, v in found.items():
            out.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("encoders", nargs="+", help="stage-1 checkpoints (or run dirs), or `random` (preset init, seed 0)")
    p.add_argument("--preset", default="fmnist-tiny", help="for `random`")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "probe_features")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cols, rows, pixels = [], [], None
    for name in a.encoders:
        if name == "random":
            cfg = get_preset(a.preset, "pretrain", {})
            torch.manual_seed(0)
            net = build_rcm(cfg.model)
        else:
            net, cfg, _ = load_network(Path(name))
        net.eval()
        probe = KnnProbe(cfg)
        pixels = probe.pixels()
        tr, te = readouts(net, cfg, probe.xtr, 0), readouts(net, cfg, probe.xte, 1)
        accs = {k: knn_accuracy(tr[k], probe.ytr, te[k], probe.yte, probe.num_classes) for k in tr}
        cols.append(name)
        rows.append(accs)
        print(name, {k: round(v, 3) for k, v in accs.items()}, flush=True)
    keys = list(rows[0])
    lines = ["# k-NN of each readout of a stage-1 encoder (fmnist-tiny, σ_min, 5 000 / 1 000, 20-NN cosine)", "",
             "| readout | " + " | ".join(f"`{c}`" for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for r in rows) + " |")
    lines.append("| raw pixels | " + " | ".join(f"{pixels:.3f}" for _ in cols) + " |")
    lines += ["", "One seed per encoder; the probe's binomial std on 1 000 test images is ≈ 0.013. Rerun: "
              "`python benchmarks/probe_features.py " + " ".join(cols) + "`.", ""]
    write_results(a.out, "\n".join(lines), {"encoders": cols, "knn": rows, "knn_pixels": pixels})


if __name__ == "__main__":
    main()
