"""Mapper sweep on a finished ``benchmarks.coldstart`` run (issue 11): cold Recall@20 of variants.

    python -m benchmarks.coldstart_sweep --out /tmp/cold/idonly --report val

Reads what ``benchmarks.coldstart`` left under ``--out`` (the derived data, the cold split files,
the exported artifacts' user vectors) and scores, among the reported cold items only, with the same
``per_user_topk``: the content cosine; the ``profile`` closed form at several ridge strengths, with
and without unit-normalised profiles; BPR mappers at several epochs / learning rates; and, as an
upper bound that the service cannot run (it needs a content profile per user beside h_u), the
exported profile map's score plus the content cosine. Exploration only: nothing here ships.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from artifact.content import load_content_path
from artifact.contract import load_artifact
from benchmarks.coldstart import unit_content
from benchmarks.common import paired_bootstrap, per_user_topk
from benchmarks.content_signal import _unit, content_profiles
from training.data import load_dataset, load_split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="a benchmarks.coldstart --out folder")
    p.add_argument("--report", choices=("val", "test"), default="val")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = load_dataset(args.out / "data-cold")
    target = load_split(args.out / f"cold_{args.report}.json", ds)
    arts = [
        load_artifact(d) for d in sorted((args.out / "store").iterdir()) if (d / "manifest.json").exists()
    ]
    users = arts[0].arrays.user_embeddings.astype(np.float64)
    popularity = ds.train.item_counts(ds.n_items)
    warm = np.flatnonzero(popularity > 0)
    cand = np.unique(np.asarray(target.indices, dtype=np.int64))  # every reported cold item has pairs
    pair_users, pair_items = ds.train.to_pairs()
    per_user: dict[str, np.ndarray] = {}

    def score(name: str, items: np.ndarray, u: np.ndarray = users) -> None:
        r = per_user_topk(u, items, cand, ds.train, target, k=20)
        per_user[name] = r["recall"]

    content = unit_content(ds)
    profiles_cos = content_profiles(ds.train.indptr, ds.train.indices, content)
    unit_items = _unit(content - content.mean(0))
    score("content cosine", unit_items, profiles_cos)
    z = np.hstack([(f - f[warm].mean(0)) / f[warm].std(0).clip(1e-6) for f in ds.features.values()])
    counts = np.bincount(pair_users, minlength=ds.n_users)
    active = counts > 0
    prof = np.zeros((ds.n_users, z.shape[1]))
    np.add.at(prof, pair_users, z[pair_items])
    prof = prof[active] / counts[active, None]
    h = users[active]
    for alpha in (1e-3, 1e-2, 1e-1):
        for unit in (False, True):
            y = _unit(prof) if unit else prof
            w = np.linalg.solve(h.T @ h + alpha * len(h) * np.eye(h.shape[1]), h.T @ y)
            score(f"profile alpha={alpha:g}{' unit profiles' if unit else ''}", z @ w.T)
    zt, ut = torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(users, dtype=torch.float32)
    pu, pi, neg_from = torch.as_tensor(pair_users), torch.as_tensor(pair_items), torch.as_tensor(warm)
    for epochs, lr in ((5, 1e-3), (10, 1e-3), (20, 1e-3), (10, 1e-2)):
        g = torch.Generator().manual_seed(0)
        lin = torch.nn.Linear(z.shape[1], users.shape[1])
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        opt = torch.optim.Adam(lin.parameters(), lr=lr)
        for _ in range(epochs):
            order = torch.randperm(pu.numel(), generator=g)
            for s in range(0, order.numel(), 2048):
                idx = order[s : s + 2048]
                neg = neg_from[torch.randint(0, neg_from.numel(), (idx.numel(),), generator=g)]
                diff = (ut[pu[idx]] * (lin(zt[pi[idx]]) - lin(zt[neg]))).sum(1)
                loss = -torch.nn.functional.logsigmoid(diff).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            score(f"bpr epochs={epochs} lr={lr:g}", lin(zt).numpy().astype(np.float64))
    exported = [a for a in arts if a.manifest.content and a.manifest.content["kind"] == "profile"]
    if exported:
        cp = load_content_path(exported[-1])
        assert cp is not None
        mapped = cp.item_vectors(ds.features).astype(np.float64)
        s1 = (users @ mapped[cand].T).std()
        s2 = (profiles_cos @ unit_items[cand].T).std()
        for weight in (0.25, 1.0):
            combo_items = np.hstack([mapped * weight / s1, unit_items / s2])
            score(f"exported profile map x{weight:g} + content cosine (not servable)", combo_items,
                  np.hstack([users, profiles_cos]))  # fmt: skip
    stats = paired_bootstrap(per_user, "content cosine", n_boot=1000)
    print(
        f"cold-{args.report}, {len(cand)} candidates, {len(per_user['content cosine'])} users; diff to content cosine"
    )
    for name, s in stats.items():
        print(
            f"| {name} | {s['mean']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}] | {s['diff']:+.4f} [{s['diff_lo']:+.4f}, {s['diff_hi']:+.4f}] |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
