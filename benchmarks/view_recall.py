"""Recall of the exact Eq. 8 top-k under the IVF view search (``view_index=ivf``), on a dataset.

    python -m benchmarks.view_recall --data ../shared/data/tiktok --config configs/tiktok.yaml \
        --probes 8 16 32 64 num_threads=1

The modality features are those of the model the trainer starts from (seeded as in training), or
of ``--checkpoint``'s trained model. For each number of probed cells: seconds of the IVF search
and, per modality, the mean over active users of |IVF top-k ∩ exact top-k| / k; plus the seconds
of the exact search. Prints a table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import emit
from model import MMSSL
from model.graph import modality_topk
from training.config import load_config
from training.data import load_dataset
from training.trainer import TrainingState, load_checkpoint, model_config_for, model_from_checkpoint
from training.views import default_n_lists, ivf_modality_topk, topk_recall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p.add_argument("--checkpoint", type=Path, help="a best.pt / last.pt; default: the untrained model")
    p.add_argument("--probes", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/view_recall.json"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    tc = cfg.train
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    dataset = load_dataset(args.data)
    device = torch.device("cpu")
    if args.checkpoint:
        model, _ = model_from_checkpoint(load_checkpoint(args.checkpoint), device)
    else:
        torch.manual_seed(tc.seed)  # the trainer's initial model
        model = MMSSL(model_config_for(dataset, cfg.model))
    model.eval()
    state = TrainingState(dataset, model.config, device)
    if not args.checkpoint:
        model.set_feature_stats(state.item_raw)  # as the trainer does before its first step
    with torch.no_grad():
        feats = model.modality_features(state.item_raw, state.graph)
    k = model.config.view_topk
    t = time.perf_counter()
    exact = modality_topk(feats.users, feats.items, k, state.active_users)
    exact_s = time.perf_counter() - t
    lists = tc.view_ivf_lists or default_n_lists(dataset.n_items)
    rows = []
    for probe in args.probes:
        t = time.perf_counter()
        approx = ivf_modality_topk(feats.users, feats.items, k, state.active_users, lists, probe, tc.seed)
        rows.append(
            {
                "probe": probe,
                "seconds": time.perf_counter() - t,
                "recall": [topk_recall(a, e) for a, e in zip(approx, exact, strict=True)],
            }
        )
    names = " / ".join(model.config.modalities)
    lines = [
        f"{dataset.n_users} users, {dataset.n_items} items, top-{k}, {lists} cells, "
        f"{torch.get_num_threads()} thread(s); exact search {exact_s:.2f} s",
        "",
        f"| cells probed | IVF search s | recall of the exact top-{k} ({names}) |",
        "|---|---|---|",
    ]
    for r in rows:
        recall = " / ".join(f"{x:.3f}" for x in r["recall"])
        lines.append(f"| {r['probe']} | {r['seconds']:.2f} | {recall} |")
    meta = {"command": " ".join(["python -m benchmarks.view_recall", *(argv or sys.argv[1:])])}
    emit("\n".join(lines) + "\n", {"meta": meta, "exact_s": exact_s, "lists": lists, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
