"""`epg import` (the authors' checkpoints → a run directory) and `epg export` (a run → the authors' layout)."""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from epg.atomic import atomic_path
from epg.config import Config, ConfigError, parse_overrides
from epg.engine import checkpoint as ck
from epg.interop import official
from epg.presets import PRESETS, get_preset
from epg.stages import build_network, stage_of


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import", help="turn a checkpoint in the authors' layout (nnet.pth, nnet_ema.pth, "
                                             "target_model.pth) into an epg run directory; --model.* overrides")
    p.add_argument("path", help="the authors' checkpoint folder, or a bare .pth file")
    p.add_argument("--preset", required=True, help="the preset the weights belong to (heads cannot be read off "
                                                   "the shapes), e.g. epg-xl-16-in256")
    p.add_argument("--run-dir", required=True, help="the new run directory to write")
    p.add_argument("--stage", choices=("diffusion", "consistency"), default=None,
                   help="for a generator: the stage it was tuned for (default: the preset's)")
    p.add_argument("--step", type=int, default=0, help="the training step the weights were saved at (schedules "
                                                       "resume from it; default 0)")
    p.set_defaults(func=cmd_import, takes_overrides=True)
    p = subparsers.add_parser("export", help="write a run's newest checkpoint as a shareable model folder "
                                             "(model.safetensors, config.json, README.md) or in the authors' layout")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("out", help="folder to create")
    p.add_argument("--format", choices=("hf", "official"), default="hf",
                   help="hf: a Hugging Face-style model folder that epg.load and epg sample read (default); "
                        "official: nnet.pth + nnet_ema.pth (or target_model.pth) as the authors' code saves them")
    p.add_argument("--eval", type=Path, metavar="RESULTS.json",
                   help="`epg evaluate --json` output to quote in the model card (hf)")
    p.set_defaults(func=cmd_export)


def _expected(net: nn.Module) -> dict[str, torch.Size]:
    return {official.to_official_name(k): v.shape for k, v in net.state_dict().items()}


def fitting_presets(state: dict[str, torch.Tensor], stage1: bool) -> list[str]:
    """Presets whose network has exactly these (authors') keys and shapes."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fits = []
    for name in PRESETS:
        cfg = get_preset(name)
        if stage_of(cfg).generates == stage1:
            continue
        with torch.device("meta"):
            expected = {k: tuple(v) for k, v in _expected(build_network(cfg)).items()}
        if expected == shapes:
            fits.append(name)
    return fits


def _hint(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], kind: str, preset: str) -> str:
    fits = [f for f in fitting_presets(state, kind == "stage1") if f != preset]
    if fits:
        return f"the shapes fit preset {', '.join(fits)}"
    rest = {k: v for k, v in expected.items() if k != "class_embed.weight"}
    if kind == "generator" and official.fit_problems({k: v for k, v in state.items() if k != "class_embed.weight"},
                                                     rest) == "":
        if "class_embed.weight" not in state:
            return "an unconditional generator: add --model.num_classes 0"
        return f"add --model.num_classes {state['class_embed.weight'].shape[0] - 1} (the last row is the null label)"
    return "check --preset and the --model.* overrides"


def _import_config(args: argparse.Namespace, kind: str) -> Config:
    overrides = parse_overrides(args.rest)
    default = get_preset(args.preset, overrides=overrides)
    if kind == "stage1":
        if args.stage:
            raise ConfigError(f"{args.path} is a stage-1 network; --stage {args.stage} is for generators")
        stage = "pretrain"
    else:
        stage = args.stage or (default.stage if stage_of(default).generates else "")
        if not stage:
            raise ConfigError(f"{args.path} is a generator but preset {args.preset} is a stage-1 preset; "
                              "name a generator preset (e.g. epg-xl-16-in256) or pass --stage")
    return get_preset(args.preset, stage, overrides)


def _to_ours(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((official.to_our_name(k), v) for k, v in state.items())


def _optimizer_meta(net: nn.Module, cfg: Config) -> dict:
    """The param groups a fresh optimizer of this run would save (the authors' files hold no optimizer state)."""
    from epg.engine.model import optimizer_state
    from epg.engine.setup import param_groups

    opt = torch.optim.AdamW(param_groups(net, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                            foreach=False)
    return optimizer_state(net, opt)[1]


def import_official(args: argparse.Namespace) -> Path:
    """Check every key and shape, then write an ordinary run directory whose checkpoint resumes and samples."""
    src, run_dir = Path(args.path), Path(args.run_dir)
    if ck.list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(f"{run_dir} already holds checkpoints; import into a new --run-dir")
    if args.step < 0:
        raise ConfigError(f"--step must be ≥ 0, not {args.step}")
    kind, files = official.read_official(src)
    cfg = _import_config(args, kind)
    net = build_network(cfg)
    expected = _expected(net)
    for name, state in files.items():
        problems = official.fit_problems(state, expected)
        if problems:
            hint = _hint(state, expected, kind, args.preset)
            raise ck.CheckpointError(f"{src / name if src.is_dir() else src} does not fit {args.preset} with these "
                                     f"overrides: {problems} — {hint}")
    ours = {name: _to_ours(state) for name, state in files.items()}
    if kind == "stage1":
        online = ours.get("nnet.pth") or next(iter(ours.values()))
        ck.load_state_strict(net, online, f"{src}")
        teacher = ours.get("target_model.pth", online)
        tensors = {"model": online, "state": {f"extra.teacher.{k}": v for k, v in teacher.items()}}
    else:
        online = ours.get("nnet.pth") or ours.get("nnet_ema.pth") or next(iter(ours.values()))
        ck.load_state_strict(net, online, f"{src}")
        tensors = {"model": online, "ema": ours.get("nnet_ema.pth", online), "state": {}}
    source = {"format": "official", "name": src.name,
              "files": {n: ck.file_sha256(src / n if src.is_dir() else src) for n in files}}
    meta = {"step": args.step, "images": args.step * cfg.train.global_batch, "scaler": {},
            "optimizer": _optimizer_meta(net, cfg), "imported": source}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.to_json())
    return ck.write_checkpoint(run_dir / "checkpoints" / f"step-{args.step:08d}", cfg, tensors, meta)


def cmd_import(args: argparse.Namespace) -> int:
    path = import_official(args)
    cfg = ck.read_config(path)
    print(f"epg: imported {args.path} as {cfg.preset} ({cfg.stage}, normalisation {cfg.noise.normalization}) "
          f"→ {path}")
    return 0


def export_official(run: Path, out: Path) -> Path:
    """Write `nnet.pth` + `nnet_ema.pth` (generator) or `nnet.pth` + `target_model.pth` (stage 1), atomically."""
    ckpt = ck.resolve_checkpoint(run)
    ck.verify_checkpoint(ckpt)
    cfg = ck.read_config(ckpt)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new folder")
    model = ck.read_tensors(ckpt, "model")
    if not stage_of(cfg).generates:
        state = ck.read_tensors(ckpt, "state") if (ckpt / "state.safetensors").is_file() else {}
        teacher = {k[len("extra.teacher."):]: v for k, v in state.items() if k.startswith("extra.teacher.")}
        files = {"nnet.pth": model, "target_model.pth": teacher or model}
    else:
        ema = ck.read_tensors(ckpt, "ema") if (ckpt / "ema.safetensors").is_file() else model
        files = {"nnet.pth": model, "nnet_ema.pth": ema}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name, state in files.items():
            official.save_pth(tmp / name, official.to_official(state))
    return out


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "official":
        out = export_official(Path(args.run), Path(args.out))
    else:
        from epg.interop.model_folder import export_model_folder

        evaluation = None
        if args.eval is not None:
            try:
                evaluation = json.loads(args.eval.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"--eval {args.eval}: not a readable `epg evaluate --json` file ({e})") from None
        out = export_model_folder(Path(args.run), Path(args.out), evaluation)
    names = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"epg: exported {args.run} ({args.format}) → {out} ({names})")
    return 0
