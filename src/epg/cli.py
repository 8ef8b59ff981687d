"""`epg` command line: presets, config, pretrain, finetune, sample, evaluate, prepare, plot, demo, import, export."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from epg.config import STAGES, ConfigError, all_keys, parse_overrides


def _train_config(args: argparse.Namespace, rest: list[str], stage: str):
    overrides = parse_overrides(rest)
    if getattr(args, "data", None):
        overrides["data.source"] = args.data
    if getattr(args, "init", None):
        overrides["train.init_from"] = args.init
    from epg.presets import get_preset

    return get_preset(args.preset, stage, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from epg.engine.trainer import Trainer
    from epg.evaluation import default_hooks

    stage = "pretrain" if args.command == "pretrain" else args.objective
    cfg = _train_config(args, args.rest, stage)
    run_dir = Path(args.run_dir or f"runs/{cfg.preset}-{stage}")
    trainer = Trainer(cfg, run_dir, restart=args.restart)
    result = trainer.fit(default_hooks(cfg))
    if trainer.env.is_main:
        print(f"epg: {stage} stopped at step {result.step}; checkpoint: {result.checkpoint}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    import torch

    from epg.presets import PRESETS, get_preset
    from epg.stages import stage_of

    print(f"{'preset':<18} {'stage':<12} {'res':>4} {'tokens':>6} {'params':>10} {'GFLOPs':>8}")
    for name in PRESETS:
        cfg = get_preset(name)
        stage = stage_of(cfg)
        with torch.device("meta"):
            net = stage.network(cfg.model)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        tokens = (cfg.model.img_size // cfg.model.patch) ** 2 + 2
        gflops = stage.compute(cfg.model).paper_gflops
        print(f"{name:<18} {cfg.stage:<12} {cfg.model.img_size:>4} {tokens:>6} {params:>9.1f}M {gflops:>8.1f}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from epg.config_help import HELP

    if args.stage is not None and args.stage not in STAGES:
        raise ConfigError(f"--stage {args.stage!r} is not one of {', '.join(STAGES)}")
    from epg.presets import get_preset

    cfg = get_preset(args.preset, args.stage, parse_overrides(args.rest))
    rows = [(f"{key} = {value!r}", HELP.get(key, "")) for key, value in all_keys(cfg).items()]
    width = max(len(r[0]) for r in rows)
    for setting, text in rows:
        print(f"{setting:<{width}}  # {text}" if text else setting)
    return 0


def _known_errors() -> tuple[type[BaseException], ...]:
    from epg.data import DataError
    from epg.engine.checkpoint import CheckpointError
    from epg.engine.resume import RunDirInUseError
    from epg.engine.trainer import NonFiniteLossError
    from epg.metrics import MetricsError

    return (ConfigError, CheckpointError, DataError, MetricsError, NonFiniteLossError, RunDirInUseError,
            FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="list presets with parameters and GFLOPs").set_defaults(func=cmd_presets)
    p = sub.add_parser("config", help="print every config key of a preset (with overrides applied)")
    p.add_argument("--preset", default="fmnist-tiny")
    p.add_argument("--stage", default=None)
    p.set_defaults(func=cmd_config)
    for name in ("pretrain", "finetune"):
        p = sub.add_parser(name, help=f"stage {'1' if name == 'pretrain' else '2'} training; "
                                      "any config key can follow as --key value")
        p.add_argument("--preset", required=True)
        p.add_argument("--data", help="dataset: fmnist, a packed dir, an image folder or an .npz")
        p.add_argument("--run-dir", help="where checkpoints and logs go (rerun the command to resume)")
        p.add_argument("--restart", action="store_true",
                       help="start over at step 0 even though the run directory has checkpoints (they are kept)")
        if name == "finetune":
            p.add_argument("--objective", choices=("diffusion", "consistency"), default="diffusion")
            p.add_argument("--init", help="stage-1 checkpoint (or run dir); omit for a random encoder")
        p.set_defaults(func=cmd_train)
    from epg.data.cli import add_parser as add_prepare
    from epg.generate_cli import add_parser as add_sample
    from epg.metrics.cli import add_parser as add_evaluate
    from epg.plot import add_parser as add_plot

    for add in (add_sample, add_evaluate, add_prepare, add_plot):
        add(sub)
    from epg.demo import add_parser as add_demo
    from epg.interop.cli import add_parsers as add_interop

    add_demo(sub)
    add_interop(sub)
    return parser


# The subcommands and their one-line help, for `epg --help` without importing torch (the full parser imports
# every command's module); tests/test_cli.py checks that it matches the full parser.
SUBCOMMANDS = {
    "presets": "list presets with parameters and GFLOPs",
    "config": "print every config key of a preset (with overrides applied)",
    "pretrain": "stage 1 training; any config key can follow as --key value",
    "finetune": "stage 2 training; any config key can follow as --key value",
    "sample": "generate images from a checkpoint (ADM .npz and/or PNGs + grid)",
    "evaluate": "FID, sFID, precision/recall of samples against a reference",
    "prepare": "pack ImageNet (or any ImageFolder tree) into memory-mapped shards at one resolution",
    "plot": "draw a run's loss/FID curves to PNG",
    "demo": "pre-train + fine-tune + sample + FID on Fashion-MNIST (CPU)",
    "import": "turn a checkpoint in the authors' layout (nnet.pth, nnet_ema.pth, target_model.pth) into an epg run "
              "directory; --model.* overrides",
    "export": "write a run's newest checkpoint as a shareable model folder (model.safetensors, config.json, "
              "README.md) or in the authors' layout",
}


def help_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand's name and help, and none of their modules imported."""
    parser = argparse.ArgumentParser(prog="epg", description=__doc__,
                                     epilog="`epg COMMAND --help` shows a command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in SUBCOMMANDS.items():
        sub.add_parser(name, help=text)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"epg: warning: {message}\n"  # what was skipped and why, without Python's source-line echo


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        help_parser().parse_args(argv)  # prints the help (or the usage error) and exits
    import warnings

    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    takes_overrides = args.func in (cmd_train, cmd_config) or getattr(args, "takes_overrides", False)
    if rest and not takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return int(args.func(args) or 0)
    except _known_errors() as e:
        print(f"epg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("epg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
