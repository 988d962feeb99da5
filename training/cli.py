"""``python -m training``: synth | train | evaluate | export | job.

Every failure caused by input (data, config, checkpoint, artifact) ends with one line on stderr
naming the cause and exit code 2; nothing partial is left in an artifact store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("training")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _cmd_synth(args: argparse.Namespace) -> int:
    from training.synthetic import write_synthetic

    path = write_synthetic(args.out, n_users=args.users, n_items=args.items, seed=args.seed)
    print(json.dumps({"data": str(path)}))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.data import load_dataset
    from training.trainer import BEST, train

    cfg = load_config(args.config, args.overrides)
    if args.device:
        cfg.train.device = args.device
    dataset = load_dataset(args.data)
    run_dir = Path(args.out or Path("runs") / Path(args.data).resolve().name)
    log.info("data %s: %s", args.data, dataset.summary())
    log.info("run directory %s", run_dir)
    result = train(dataset, cfg, run_dir, progress_bar=not args.no_progress)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "best_epoch": result.best_epoch,
        "val": result.best_metrics,
        "epochs_run": result.epochs_run,
        "seconds": result.seconds,
        "seconds_per_epoch": result.seconds_per_epoch,
        "peak_rss_mb": result.peak_rss_mb,
    }
    if args.export_to:
        from artifact.contract import set_current
        from training.export import export_checkpoint

        path = export_checkpoint(run_dir / BEST, dataset, args.export_to, content=args.content_path)
        summary["artifact"] = str(path)
        if args.promote:
            set_current(args.export_to, path.name)
            summary["promoted"] = True
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.data import load_dataset, load_split
    from training.trainer import BEST, evaluate_checkpoint

    ckpt_path = Path(args.checkpoint) if args.checkpoint else Path(args.run) / BEST
    dataset = load_dataset(args.data)
    target = load_split(args.split, dataset)
    metrics = evaluate_checkpoint(ckpt_path, dataset, target)
    result = {"checkpoint": str(ckpt_path), "split": str(args.split), **metrics}
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from artifact.contract import set_current
    from training.data import load_dataset
    from training.export import export_checkpoint
    from training.trainer import BEST

    ckpt_path = Path(args.checkpoint) if args.checkpoint else Path(args.run) / BEST
    dataset = load_dataset(args.data)
    path = export_checkpoint(ckpt_path, dataset, args.out, content=args.content_path)
    if args.promote:
        set_current(args.out, path.name)
    print(json.dumps({"artifact": str(path), "version": path.name, "promoted": bool(args.promote)}))
    return 0


def _cmd_job(args: argparse.Namespace) -> int:
    from training.jobs import run_job_cli

    return run_job_cli(args.spec)


# Export's content path (artifact/content.py); the choices are training.export.CONTENT_CHOICES.
CONTENT_PATH_ARG: dict[str, Any] = {
    "choices": ("ridge", "bpr", "none"),
    "default": "bpr",
    "help": "bpr (default): export a content mapper fitted by BPR against the trained user vectors "
    "and fill the vectors of items without training interactions from their features; ridge: the "
    "same linear map by ridge regression onto the trained item vectors; none: export as trained",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a seeded synthetic dataset in the MMSSL format")
    s.add_argument("--out", required=True)
    s.add_argument("--users", type=int, default=400)
    s.add_argument("--items", type=int, default=300)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth)

    t = sub.add_parser("train", help="train to early stopping; resumes from --out/last.pt")
    t.add_argument("--data", required=True, help="dataset folder (train.json, val.json, *_feat.npy)")
    t.add_argument("--config", help="YAML config (sections model: and train:)")
    t.add_argument("--out", help="run directory (default runs/<data folder name>)")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N (overrides the config)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--export-to", help="export the best checkpoint into this artifact store")
    t.add_argument("--promote", action="store_true", help="with --export-to: make it CURRENT")
    t.add_argument("--content-path", **CONTENT_PATH_ARG)
    t.add_argument("overrides", nargs="*", help="key=value or model.key=value / train.key=value")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="score a checkpoint on any split file")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory (uses best.pt)")
    src.add_argument("--checkpoint", help="checkpoint file")
    e.add_argument("--data", required=True)
    e.add_argument("--split", required=True, help="split JSON to score, e.g. DATA/val.json")
    e.add_argument("--json", help="also write the metrics here")
    e.set_defaults(func=_cmd_evaluate)

    x = sub.add_parser("export", help="write a serving artifact from a checkpoint")
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory (uses best.pt)")
    src.add_argument("--checkpoint", help="checkpoint file")
    x.add_argument("--data", required=True)
    x.add_argument("--out", required=True, help="artifact store root")
    x.add_argument("--promote", action="store_true", help="make the new version CURRENT")
    x.add_argument("--content-path", **CONTENT_PATH_ARG)
    x.set_defaults(func=_cmd_export)

    j = sub.add_parser("job", help="run a retrain job from a JSON spec (used by the service)")
    j.add_argument("--spec", required=True)
    j.set_defaults(func=_cmd_job)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from artifact.contract import ArtifactError
    from training.config import ConfigError
    from training.data import DataError

    try:
        return int(args.func(args))
    except (DataError, ConfigError, ArtifactError, FileNotFoundError, ValueError, RuntimeError) as exc:
        if args.verbose:
            log.exception("failed")
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
