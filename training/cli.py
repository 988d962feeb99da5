"""``python -m training``: synth | train | evaluate | export | job | import | encode | export-format.

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

from artifact.content import CONTENT_KINDS

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


def _kept_current(store: str, data: str) -> dict[str, Any] | None:
    """``train --keep-current``: the model the store's ``CURRENT`` names, or None when it names none.

    That model may be newer than anything this run directory holds (``POST /retrain`` promotes into
    the same store), so exporting the run's best checkpoint over it would silently roll it back.
    """
    from artifact.contract import ArtifactError, read_current, read_manifest
    from training.data import load_dataset

    version = read_current(store)
    if version is None:
        return None
    manifest = read_manifest(Path(store) / version)
    n_items = load_dataset(data).n_items
    if manifest.n_items != n_items:
        raise ArtifactError(
            f"{store}/CURRENT: {version} has {manifest.n_items} items but {data} has {n_items}: "
            "it was trained on other data (start from scratch: make demo-reset)"
        )
    job = manifest.notes.get("job_id")
    origin = f"promoted by retrain job {job}" if job else "exported by python -m training"
    recall = manifest.val_recall20()
    log.info(
        "%s/CURRENT names %s (%s, created %s, val recall@20 %s): serving it as it is, nothing trained; "
        "to train from scratch run make demo-reset",
        store,
        version,
        origin,
        manifest.created_at,
        "n/a" if recall is None else f"{recall:.4f}",
    )
    return {"artifact": str(Path(store) / version), "version": version, "kept_current": True}


def _cmd_train(args: argparse.Namespace) -> int:
    if args.keep_current:
        if not (args.export_to and args.promote):
            raise ValueError("--keep-current needs --export-to STORE --promote")
        kept = _kept_current(args.export_to, args.data)
        if kept is not None:
            print(json.dumps(kept, indent=1))
            return 0

    from training.config import load_config
    from training.data import load_dataset

    # config and data first: a bad input is reported before torch is imported (seconds)
    cfg = load_config(args.config, args.overrides)
    if args.device:
        cfg.train.device = args.device
    dataset = load_dataset(args.data)
    from training.trainer import BEST, train

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


# Export's content path (artifact/content.py, numpy only: no torch import to parse the arguments).
CONTENT_PATH_ARG: dict[str, Any] = {
    "choices": (*CONTENT_KINDS, "none"),
    "default": "bpr-calibrated",
    "help": "bpr-calibrated (default): export a content mapper fitted by BPR against the trained user "
    "vectors, scaled by the least-squares line of the warm items' trained vectors on their mapped "
    "ones (same order of new items for every user as bpr, placed among the trained items), and fill "
    "the vectors of items without training interactions from their features; bpr: the map unscaled "
    "(new items then score above trained ones on the full model); profile: the "
    "same linear map in closed form so that h_u . h_i imitates the user's content profile; ridge: by "
    "ridge regression onto the trained item vectors; knn / knn-calibrated (a model trained with "
    "item_graph_k > 0): the item's row of the frozen item kNN graph's propagation S^L E, raw or on "
    "the warm items' least-squares line; none: export as trained",
}


def _cmd_import(args: argparse.Namespace) -> int:
    from training.importers import prepare, write_dataset

    if args.format == "mmrec":
        from training.importers.mmrec import read_mmrec

        log_ = read_mmrec(args.src)
    elif args.format == "recbole":
        from training.importers.recbole import read_recbole

        log_ = read_recbole(
            args.src,
            user_col=args.user_col or "user_id",
            item_col=args.item_col or "item_id",
            time_col=args.time_col or "timestamp",
            rating_col=args.rating_col or "rating",
        )
    else:
        from training.importers.tabular import read_tabular

        log_ = read_tabular(
            args.src,
            user_col=args.user_col or "user",
            item_col=args.item_col or "item",
            time_col=args.time_col,
            rating_col=args.rating_col,
            items_table=args.items,
            item_id_col=args.item_id_col,
        )
    prepared = prepare(
        log_,
        split=args.split,
        seed=args.seed,
        kcore=args.kcore,
        rating_threshold=args.rating_threshold,
        dedupe=args.dedupe,
    )
    out = write_dataset(prepared, args.out)
    print(json.dumps({"data": str(out), **prepared.summary}, indent=1))
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from training.data import load_dataset
    from training.encode import encode_items, image_contents, make_encoder, text_contents

    item_ids = load_dataset(args.data).item_ids
    encoder = make_encoder(args.kind, args.encoder, dim=args.dim, seed=args.seed, bins=args.bins)
    contents: list[Any]
    if args.kind == "text":
        if not args.items:
            raise ValueError("encode --kind text needs --items TABLE")
        contents, extra = text_contents(
            item_ids, Path(args.items), args.id_col, args.text_cols, args.template
        )
    else:
        contents, extra = image_contents(
            item_ids,
            folder=Path(args.images) if args.images else None,
            table=Path(args.items) if args.items else None,
            id_col=args.id_col,
            path_col=args.image_col,
        )
    report = encode_items(
        args.data,
        args.modality or args.kind,
        item_ids,
        contents,
        encoder,
        chunk=args.chunk,
        batch=args.batch,
        progress=not args.no_progress,
        force=args.force,
        extra_report=extra,
    )
    shown = {k: v for k, v in report.items() if k != "missing_items"}
    shown["missing_items_first"] = report["missing_items"][:10]
    print(json.dumps(shown, indent=1))
    return 0


def _cmd_export_format(args: argparse.Namespace) -> int:
    from training.data import load_dataset
    from training.importers.mmrec import export_mmrec

    path = export_mmrec(load_dataset(args.data), args.out, name=args.name)
    print(json.dumps({"format": args.format, "out": str(path)}))
    return 0


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
    t.add_argument(
        "--keep-current",
        action="store_true",
        help="with --export-to --promote: if the store already names a CURRENT model, keep serving "
        "it and train nothing (make demo's second run)",
    )
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

    i = sub.add_parser("import", help="import an MMRec / RecBole / CSV / Parquet log as a dataset folder")
    i.add_argument("--format", required=True, choices=["mmrec", "recbole", "csv", "parquet"])
    i.add_argument("--src", required=True, help="source file, or the folder holding <name>.inter")
    i.add_argument("--out", required=True, help="new dataset folder (must not exist or be empty)")
    i.add_argument("--split", required=True, choices=["source", "random", "loo", "time"])
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--kcore", type=int, default=0, help="keep users and items with >= K interactions")
    i.add_argument("--rating-threshold", type=float, help="drop interactions rated below this (implicit)")
    i.add_argument("--dedupe", action="store_true", help="keep the earliest of duplicate (user, item) rows")
    i.add_argument("--user-col", help="user id column (csv: user, recbole: user_id)")
    i.add_argument("--item-col", help="item id column (csv: item, recbole: item_id)")
    i.add_argument("--time-col", help="timestamp column (numbers or ISO-8601)")
    i.add_argument("--rating-col", help="rating column")
    i.add_argument("--items", help="csv/parquet: item table whose items join the id space (cold if unseen)")
    i.add_argument("--item-id-col", help="item id column of --items (default: --item-col)")
    i.set_defaults(func=_cmd_import)

    c = sub.add_parser("encode", help="encode item text or images into <modality>_feat.npy of a dataset")
    c.add_argument("--data", required=True, help="dataset folder whose items to encode")
    c.add_argument("--kind", required=True, choices=["text", "image"])
    c.add_argument(
        "--encoder",
        required=True,
        help=(
            "text: tfidf | packaged | model2vec:X | sentence-transformers:X; "
            "image: histogram | torchvision:NAME[@WEIGHTS.pth] | timm:NAME[@WEIGHTS.pth]"
        ),
    )
    c.add_argument("--modality", help="name of the feature file (default: the kind)")
    c.add_argument("--items", help="item table: CSV, TSV, Parquet or a RecBole .item file")
    c.add_argument("--id-col", default="item_id", help="item id column of --items")
    c.add_argument("--text-cols", nargs="+", default=[], help="text columns, joined by '. '")
    c.add_argument("--template", help="text template with {column} fields, e.g. '{title} ({genres})'")
    c.add_argument("--images", help="folder of <item id>.<jpg|png|...> files")
    c.add_argument("--image-col", help="column of --items with image paths (relative to the table)")
    c.add_argument("--dim", type=int, default=64, help="tfidf: output dimension")
    c.add_argument("--bins", type=int, default=4, help="histogram: bins per colour channel")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--chunk", type=int, default=1024, help="items per resumable chunk")
    c.add_argument("--batch", type=int, default=256, help="items per encoder call")
    c.add_argument("--force", action="store_true", help="replace an existing feature file")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_encode)

    f = sub.add_parser("export-format", help="write a dataset folder in another toolkit's format")
    f.add_argument("format", choices=["mmrec"])
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True, help="new folder (must not exist or be empty)")
    f.add_argument("--name", help="dataset name, the <name>.inter file (default: the folder name)")
    f.set_defaults(func=_cmd_export_format)
    return p


def _input_errors() -> tuple[type[Exception], ...]:
    """The exception types that mean bad input. Looked up in the modules already imported (one that
    never was raised none of its own): importing training.config would import torch, which
    ``synth`` and ``train --keep-current`` do not need (seconds on every ``make demo``)."""
    errors: list[type[Exception]] = [FileNotFoundError, ValueError, RuntimeError]
    for module, name in (
        ("training.data", "DataError"),
        ("training.config", "ConfigError"),
        ("artifact.contract", "ArtifactError"),
    ):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except Exception as exc:
        if not isinstance(exc, _input_errors()):
            raise
        if args.verbose:
            log.exception("failed")
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
