"""Cold-start benchmark (issue 11): items that have content but no interaction at training time.

    python -m benchmarks.coldstart --data ../shared/data/tiktok --config configs/tiktok.yaml \
        --seed 1 --report test --out benchmarks/results/coldstart num_threads=1

The protocol of the cold-start literature (GAR, ALDI): from the dataset's train + validation
interactions (its test split is never read), a seeded ``--cold-share`` (20%) of the items that have
any interaction is held out ENTIRELY: half become cold-validation items, half cold-test items.

* Training data: ``train.json`` without the cold items; its validation file (early stopping) is
  ``val.json`` without them: the warm evaluation pairs.
* ``cold``: each user's interactions with the ``--report`` half of the cold items (``val`` or
  ``test``), ranked among those cold items only.
* ``warm``: the warm validation pairs, ranked among the warm items (training items masked).
* ``hybrid``: both sets of pairs, ranked among warm + reported-cold items together.

Rankings compared (Recall/NDCG@20, paired bootstrap 95% intervals over users, and each method's
difference to the content path): random; popularity; raw content cosine to the user's profile
(the mean of their training items' unit, centred features, all modalities concatenated); the kNN
average of warm neighbours (a cold item's vector is the mean h_i of its ``--knn`` most
content-similar warm items in the trained model); each trained variant as exported without a content
path (its cold items keep their untrained vectors), and with it (``artifact.content``: the ridge
mapper fitted at export, the service's code path). ``--learned-content`` adds a content-only
two-tower model trained on the warm pairs (``learned_content``): not a serving path, a measure of
how far these features go for cold items.

``--ordinary`` adds the ordinary split: each variant trained on the unmodified data, and
Recall@20 over all validation pairs and over the validation pairs whose item has no training
interaction, with and without the content path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from artifact.content import CONTENT_KINDS, load_content_path
from artifact.contract import Artifact, load_artifact
from benchmarks.common import candidate_pairs, emit, paired_bootstrap, per_user_topk
from benchmarks.content_signal import _unit, content_profiles
from training.data import Dataset, Interactions, load_dataset, load_split

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "id_only": ["id_only=true"],
    "full": [],
    # issue 11 (b): trained with the frozen item kNN graph (FREEDOM's k = 10); content kind "knn"
    "id_only_knn": ["id_only=true", "item_graph_k=10"],
    "full_knn": ["item_graph_k=10"],
}
METRICS = ("recall", "ndcg")
REFERENCE_SUFFIX = " + content path"
LEARNED = "two-tower content model (learned, no IDs)"
BLEND = "blend by score"


def cold_split(data: Path, seed: int, share: float) -> dict[str, Any]:
    """The held-out items and the derived split files' contents (external ids, as in the files)."""
    train = json.loads((data / "train.json").read_text())
    val = json.loads((data / "val.json").read_text())
    items = sorted({i for split in (train, val) for its in split.values() for i in its})
    rng = np.random.default_rng(seed)
    n_cold = int(round(share * len(items)))
    held = rng.permutation(np.asarray(items))[:n_cold]
    cold_val, cold_test = set(held[: n_cold // 2].tolist()), set(held[n_cold // 2 :].tolist())
    cold = cold_val | cold_test
    users = sorted(set(train) | set(val), key=int)

    def only(
        split: dict[str, list[int]], keep: set[int] | None, drop: set[int] | None
    ) -> dict[str, list[int]]:
        out = {}
        for u in users:
            its = split.get(u, [])
            out[u] = [i for i in its if (keep is None or i in keep) and (drop is None or i not in drop)]
        return out

    both = {u: sorted(train.get(u, []) + val.get(u, [])) for u in users}
    return {
        "train": only(train, None, cold),
        "val": only(val, None, cold),
        "cold_val": only(both, cold_val, None),
        "cold_test": only(both, cold_test, None),
        "cold_val_items": sorted(cold_val),
        "cold_test_items": sorted(cold_test),
    }


def write_derived(src: Path, dst: Path, split: dict[str, Any]) -> Path:
    """A dataset folder (train.json, val.json, feature symlinks) plus the two cold split files."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val"):
        (dst / f"{name}.json").write_text(json.dumps(split[name]))
    for f in src.iterdir():
        if f.name.endswith("_feat.npy") and not (dst / f.name).exists():
            os.symlink(f.resolve(), dst / f.name)
    for name in ("cold_val", "cold_test"):
        (dst.parent / f"{name}.json").write_text(json.dumps(split[name]))
    return dst


def _training_cli(*args: str, log: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "a") as fh:
        fh.write("$ python -m training " + " ".join(args) + "\n")
        fh.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "training", *args],
            stdout=subprocess.PIPE,
            stderr=fh,
            text=True,
            env=env,
            cwd=ROOT,
        )
    if proc.returncode != 0:
        raise SystemExit(f"failed: python -m training {' '.join(args)} (see {log})")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def train_variant(
    data: Path,
    out: Path,
    variant: str,
    config: str | None,
    seed: int,
    overrides: list[str],
    kinds: list[str],
    reuse: bool = False,
) -> dict[str, Artifact]:
    """Train one variant on ``data``; return its artifacts: content path kind (or "none") -> artifact.

    ``reuse``: take the checkpoint an earlier run with the same ``--out`` left in ``run-<variant>``
    and the artifacts it exported from it (``run-<variant>/exports.json``); only the content kinds
    not exported yet are (the export refuses a checkpoint of other data)."""
    out.mkdir(parents=True, exist_ok=True)
    run, store, log = out / f"run-{variant}", out / "store", out / f"log-{variant}.txt"
    config_args = ["--config", config] if config else []
    reused = reuse and (run / "best.pt").exists()
    if reused:
        trained = {"run_dir": str(run)}
    else:
        trained = _training_cli(
            "train", "--data", str(data), "--out", str(run), "--no-progress", *config_args,
            f"seed={seed}", *overrides, *VARIANTS[variant], log=log,
        )  # fmt: skip
    # content kind -> artifact exported from this checkpoint; with ``reuse`` those are loaded again
    exports_file = run / "exports.json"
    exports: dict[str, str] = {}
    if reused and exports_file.exists():
        exports = json.loads(exports_file.read_text())
    arts = {}
    for content in [*kinds, "none"]:
        if content.startswith("knn") and not has_item_graph([*overrides, *VARIANTS[variant]]):
            continue  # the knn kind exists only for a model trained with the item graph
        if content not in exports or not Path(exports[content]).is_dir():
            exported = _training_cli(
                "export", "--run", trained["run_dir"], "--data", str(data), "--out", str(store),
                "--content-path", content, log=log,
            )  # fmt: skip
            exports[content] = exported["artifact"]
            exports_file.write_text(json.dumps(exports, indent=1) + "\n")
        arts[content] = load_artifact(exports[content])
    return arts


def has_item_graph(overrides: list[str]) -> bool:
    """Whether these trainer overrides (the last of a key wins) train with the item kNN graph."""
    k = 0
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "item_graph_k":
            k = int(value)
    return k > 0


def unit_content(dataset: Dataset) -> np.ndarray:
    """All modalities' unit, centred features, concatenated: (n_items, sum D_m)."""
    return np.concatenate(
        [
            _unit(np.asarray(f, np.float64) - np.asarray(f, np.float64).mean(0))
            for f in dataset.features.values()
        ],
        axis=1,
    )


def knn_average(
    item_emb: np.ndarray, content: np.ndarray, warm: np.ndarray, cold: np.ndarray, k: int
) -> np.ndarray:
    """item_emb with each cold row replaced by the mean of its k most content-similar warm rows."""
    out = item_emb.copy()
    unit = _unit(content - content.mean(0))
    sims = unit[cold] @ unit[warm].T  # (n_cold, n_warm)
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    out[cold] = item_emb[warm][nearest].mean(axis=1)
    return out


def learned_content(
    dataset: Dataset, seed: int, epochs: int = 30, dim: int = 64, hidden: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """``--learned-content``: a content-only two-tower model, to see how far the features alone go.

    Item tower: an MLP (one hidden layer of ``hidden``, LeakyReLU) of the item's raw features,
    standardised with the statistics of the items that have training interactions, all modalities
    concatenated. User tower: the same shape of MLP over the mean standardised features of the user's
    training items. Trained with BPR on the training pairs, a negative drawn uniformly among the
    items with training interactions per pair, Adam (lr 1e-3), batches of 2,048, ``epochs`` epochs
    (no early stopping: nothing held out is looked at). Neither tower sees an ID, so a held-out item
    is scored exactly as a trained one: it bounds what any mapping from these features can do for
    cold items. Not a serving path. Returns (user vectors, item vectors) as float64."""
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    feats = np.concatenate([np.asarray(f, np.float64) for f in dataset.features.values()], axis=1)
    warm = np.flatnonzero(dataset.train.item_counts(dataset.n_items) > 0)
    z = torch.tensor((feats - feats[warm].mean(0)) / (feats[warm].std(0) + 1e-6), dtype=torch.float32)
    indptr = np.asarray(dataset.train.indptr, dtype=np.int64)
    items = torch.as_tensor(np.asarray(dataset.train.indices, dtype=np.int64))
    users = torch.repeat_interleave(torch.arange(dataset.n_users), torch.as_tensor(np.diff(indptr)))
    n_per_user = torch.as_tensor(np.diff(indptr), dtype=torch.float32).clamp(min=1)[:, None]
    profiles = torch.zeros(dataset.n_users, z.shape[1]).index_add_(0, users, z[items]) / n_per_user

    def tower() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(z.shape[1], hidden), torch.nn.LeakyReLU(), torch.nn.Linear(hidden, dim)
        )

    item_tower, user_tower = tower(), tower()
    opt = torch.optim.Adam([*item_tower.parameters(), *user_tower.parameters()], lr=1e-3)
    warm_t = torch.as_tensor(warm)
    for _ in range(epochs):
        order = torch.randperm(users.numel(), generator=gen)
        for start in range(0, order.numel(), 2048):
            batch = order[start : start + 2048]
            neg = warm_t[torch.randint(warm_t.numel(), (batch.numel(),), generator=gen)]
            u = user_tower(profiles[users[batch]])
            margin = (u * (item_tower(z[items[batch]]) - item_tower(z[neg]))).sum(1)
            loss = -torch.nn.functional.logsigmoid(margin).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return user_tower(profiles).double().numpy(), item_tower(z).double().numpy()


def rankings(
    dataset: Dataset, arts: dict[str, dict[str, Artifact]], cold: np.ndarray, knn: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """method -> (user vectors, item vectors) over all items of ``dataset``."""
    rng = np.random.default_rng(seed)
    n_u, n_i = dataset.n_users, dataset.n_items
    popularity = dataset.train.item_counts(n_i).astype(np.float64)
    content = unit_content(dataset)
    warm = np.flatnonzero(popularity > 0)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "random": (rng.standard_normal((n_u, 32)), rng.standard_normal((n_i, 32))),
        # ties (all cold items have popularity 0) broken at random
        "popularity": (np.ones((n_u, 1)), (popularity + rng.uniform(0, 1e-3, n_i))[:, None]),
        "content cosine": (
            content_profiles(dataset.train.indptr, dataset.train.indices, content),
            _unit(content - content.mean(0)),
        ),
    }
    first = next(iter(arts))
    plain0 = arts[first]["none"]
    out[f"kNN average ({first}, k={knn})"] = (
        plain0.arrays.user_embeddings,
        knn_average(plain0.arrays.item_embeddings, content, warm, cold, knn),
    )
    for variant, by_kind in arts.items():
        plain = by_kind["none"]
        out[variant] = (plain.arrays.user_embeddings, plain.arrays.item_embeddings)
        for kind, art in by_kind.items():
            if kind == "none":
                continue
            # The service's code path: h_i of the cold items from their raw features alone.
            path = load_content_path(art)
            assert path is not None
            items = art.arrays.item_embeddings.copy()
            items[cold] = path.item_vectors({m: f[cold] for m, f in dataset.features.items()})
            out[f"{variant}{REFERENCE_SUFFIX} ({kind})"] = (art.arrays.user_embeddings, items)
    return out


def per_user_slots(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    warm: np.ndarray,
    new: np.ndarray,
    train: Any,
    target: Any,
    k: int = 20,
    floor: int = 0,
    cap: int | None = None,
    batch_users: int = 1024,
) -> dict[str, np.ndarray]:
    """Recall@k and NDCG@k per user of a top-k list that mixes ``warm`` and ``new`` items by slots.

    A user's list holds the best n new items and the best k - n warm ones by h_u . h_i (training
    items masked), where n is the number of new items in the top k of both sets ranked together,
    raised to ``floor`` (reserved slots) and lowered to ``cap`` (at most), never above the new items
    the user has: ``floor = cap = 0`` is warm items alone, ``floor = 0, cap = None`` the blend by
    score, ``floor = cap = s`` exactly s new items. The list is ordered by score (NDCG). Users and
    the recall denominator as in ``per_user_topk`` over the candidates ``warm`` + ``new``.
    """
    import torch

    warm, new = np.asarray(warm, dtype=np.int64), np.asarray(new, dtype=np.int64)
    candidates = np.concatenate((warm, new))
    n_warm = warm.size
    column = np.full(item_emb.shape[0], -1, dtype=np.int64)
    column[candidates] = np.arange(candidates.size)

    t_users, t_cols = candidate_pairs(target, column)
    s_users, s_cols = candidate_pairs(train, column)
    users = np.unique(t_users)
    kw, kn = min(k, n_warm), min(k, new.size)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)
    cand_emb = torch.as_tensor(np.asarray(item_emb, dtype=np.float32)[candidates])
    user_t = torch.as_tensor(np.asarray(user_emb, dtype=np.float32))
    recall, ndcg = np.zeros(users.size), np.zeros(users.size)
    row_of = np.full(len(target.indptr) - 1, -1, dtype=np.int64)
    for start in range(0, users.size, batch_users):
        block = users[start : start + batch_users]
        row_of[block] = np.arange(block.size)
        scores = user_t[torch.as_tensor(block)] @ cand_emb.T  # (B, n_warm + n_new)
        in_block = row_of[s_users] >= 0
        scores[torch.as_tensor(row_of[s_users[in_block]]), torch.as_tensor(s_cols[in_block])] = float("-inf")
        w_val, w_idx = scores[:, :n_warm].topk(kw, dim=1)  # (B, kw), best warm first
        n_val, n_idx = scores[:, n_warm:].topk(kn, dim=1)  # (B, kn), best new first
        w_val, n_val = w_val.numpy(), n_val.numpy()
        top_val = np.concatenate((w_val, n_val), axis=1)
        # how many new items the blend by score puts in the top k (ties: warm first, as the service)
        is_new = np.concatenate((np.zeros_like(w_val, bool), np.ones_like(n_val, bool)), axis=1)
        by_score = np.lexsort((is_new, -top_val), axis=1)[:, :k]
        n_new = np.take_along_axis(is_new, by_score, axis=1).sum(axis=1)
        n_new = np.maximum(n_new, floor)
        if cap is not None:
            n_new = np.minimum(n_new, cap)
        have_new = np.isfinite(n_val).sum(axis=1)  # new items not masked by training
        n_new = np.minimum(np.minimum(n_new, have_new), k)
        take = np.concatenate(
            (np.arange(kw)[None, :] < (k - n_new)[:, None], np.arange(kn)[None, :] < n_new[:, None]), axis=1
        )
        cols = np.concatenate((w_idx.numpy(), n_idx.numpy() + n_warm), axis=1)
        listed = np.where(take, top_val, -np.inf)
        order = np.argsort(-listed, axis=1, kind="stable")[:, :k]  # the list by score
        shown = np.take_along_axis(take, order, axis=1)
        ranked = np.take_along_axis(cols, order, axis=1)
        relevant = np.zeros((block.size, candidates.size), dtype=bool)
        t_in = row_of[t_users] >= 0
        relevant[row_of[t_users[t_in]], t_cols[t_in]] = True
        hits = np.take_along_axis(relevant, ranked, axis=1) & shown
        n_rel = relevant.sum(axis=1)
        recall[start : start + block.size] = hits.sum(axis=1) / n_rel
        dcg = (hits * discount[: hits.shape[1]]).sum(axis=1)
        ndcg[start : start + block.size] = dcg / ideal[np.minimum(n_rel, k) - 1]
        row_of[block] = -1
    return {"users": users, "recall": recall, "ndcg": ndcg}


def _union(a: Interactions, b: Interactions) -> Interactions:
    (ua, ia), (ub, ib) = a.to_pairs(), b.to_pairs()
    users = np.concatenate([ua, ub]).astype(np.int64)
    return Interactions.from_pairs(users, np.concatenate([ia, ib]).astype(np.int64), a.n_users)


def evaluate(
    methods: dict[str, tuple[np.ndarray, np.ndarray]],
    dataset: Dataset,
    settings: dict[str, tuple[np.ndarray, Interactions]],
    reference: str,
    n_boot: int,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for setting, (candidates, target) in settings.items():
        per: dict[str, dict[str, np.ndarray]] = {m: {} for m in METRICS}
        users = None
        for name, (u, i) in methods.items():
            r = per_user_topk(u, i, candidates, dataset.train, target, k=20)
            users = r["users"] if users is None else users
            assert np.array_equal(users, r["users"])
            for m in METRICS:
                per[m][name] = r[m]
        results[setting] = {
            "n_users": int(0 if users is None else users.size),
            "n_candidates": int(candidates.size),
            **{f"{m}@20": paired_bootstrap(per[m], reference, n_boot=n_boot) for m in METRICS},
        }
    return results


def slot_policies(slots: list[int]) -> dict[str, tuple[int, int | None]]:
    """Policy label -> (floor, cap) of ``per_user_slots``; the first, the blend by score, is the
    reference of the differences."""
    out: dict[str, tuple[int, int | None]] = {BLEND: (0, None)}
    out.update({f"exactly {s}": (s, s) for s in slots})
    out.update({f"at least {s}": (s, None) for s in slots})
    out.update({f"at most {s}": (0, s) for s in slots})
    return out


def evaluate_slots(
    methods: dict[str, tuple[np.ndarray, np.ndarray]],
    variants: list[str],
    dataset: Dataset,
    warm: np.ndarray,
    new: np.ndarray,
    pair_sets: dict[str, Interactions],
    slots: list[int],
    n_boot: int,
) -> dict[str, Any]:
    """Each variant's content paths under each slot policy, on each set of evaluation pairs.

    Returns pairs -> variant -> {"n_users", "rows": {"<kind>, <policy>": stats}}; the stats are
    ``paired_bootstrap``'s, ``diff*`` to the same kind blended by score, plus ``none_diff*``: the
    difference to the variant without a content path, blended by score (its cold items keep their
    untrained vectors)."""
    policies = slot_policies(slots)
    out: dict[str, Any] = {}
    for pairs, target in pair_sets.items():
        out[pairs] = {}
        for variant in variants:
            kinds = {"none": variant}
            kinds.update(
                {
                    name[len(variant + REFERENCE_SUFFIX) + 2 : -1]: name
                    for name in methods
                    if name.startswith(variant + REFERENCE_SUFFIX)
                }
            )
            per: dict[str, np.ndarray] = {}
            users = None
            for kind, name in kinds.items():
                u, i = methods[name]
                for policy, (floor, cap) in policies.items():
                    if kind == "none" and policy != BLEND:
                        continue
                    r = per_user_slots(u, i, warm, new, dataset.train, target, 20, floor, cap)
                    users = r["users"] if users is None else users
                    assert np.array_equal(users, r["users"])
                    per[f"{kind}, {policy}"] = r["recall"]
            none = f"none, {BLEND}"
            vs_none = paired_bootstrap(per, none, n_boot=n_boot)
            rows: dict[str, dict[str, float]] = {}
            for kind in kinds:
                mine = {key: v for key, v in per.items() if key.startswith(f"{kind}, ")}
                for key, stats in paired_bootstrap(mine, f"{kind}, {BLEND}", n_boot=n_boot).items():
                    rows[key] = {
                        **stats,
                        **{f"none_{f}": vs_none[key][f] for f in ("diff", "diff_lo", "diff_hi")},
                    }
            out[pairs][variant] = {"n_users": int(0 if users is None else users.size), "rows": rows}
    return out


def ordinary_split(data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    dataset = load_dataset(data)
    popularity = dataset.train.item_counts(dataset.n_items)
    val = dataset.val
    users = np.repeat(np.arange(val.n_users), np.diff(val.indptr))
    cold_pairs = popularity[val.indices] == 0
    cold_val = Interactions.from_pairs(
        users[cold_pairs], val.indices[cold_pairs].astype(np.int64), val.n_users
    )
    every = np.arange(dataset.n_items)
    warm, new = np.flatnonzero(popularity > 0), np.flatnonzero(popularity == 0)
    result: dict[str, Any] = {
        "n_val_pairs": int(val.nnz),
        "n_cold_val_pairs": int(cold_pairs.sum()),
        "n_items_without_training": int(new.size),
    }
    for variant in args.variants:
        arts = train_variant(
            data, out / "ordinary", variant, args.config, args.seed, args.overrides, args.content,
            args.reuse,
        )  # fmt: skip
        row: dict[str, Any] = {}
        for kind, a in arts.items():
            label = "without" if kind == "none" else kind
            u, i = a.arrays.user_embeddings, a.arrays.item_embeddings
            all_pairs = per_user_topk(u, i, every, dataset.train, val)
            cold = per_user_topk(u, i, every, dataset.train, cold_val)
            row[label] = {
                "val_recall@20": float(all_pairs["recall"].mean()),
                "val_ndcg@20": float(all_pairs["ndcg"].mean()),
                "cold_pairs_recall@20": float(cold["recall"].mean()) if cold["users"].size else None,
                "cold_pairs_hit_users": int((cold["recall"] > 0).sum()),
                "cold_pairs_users": int(cold["users"].size),
            }
            if kind == "none" or not args.slots:
                continue
            # the items without training interactions as the new items of the slot policies
            per_all: dict[str, np.ndarray] = {}
            policies: dict[str, Any] = {}
            for policy, (floor, cap) in slot_policies(args.slots).items():
                r_all = per_user_slots(u, i, warm, new, dataset.train, val, 20, floor, cap)
                r_cold = per_user_slots(u, i, warm, new, dataset.train, cold_val, 20, floor, cap)
                per_all[policy] = r_all["recall"]
                policies[policy] = {
                    "cold_pairs_recall@20": float(r_cold["recall"].mean()) if r_cold["users"].size else None,
                    "cold_pairs_hit_users": int((r_cold["recall"] > 0).sum()),
                }
            for policy, stats in paired_bootstrap(per_all, BLEND, n_boot=args.bootstrap).items():
                policies[policy]["val_recall@20"] = stats
            row[label]["slots"] = policies
        result[variant] = row
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Cold-start benchmark, `{result['command']}`", ""]
    for setting, res in result["settings"].items():
        lines += [
            f"**{setting}** ({res['n_users']} users, {res['n_candidates']} candidate items); "
            f"difference to `{result['reference']}`",
            "",
            "| ranking | Recall@20 [95% CI] | diff | NDCG@20 [95% CI] | diff |",
            "|---|---|---|---|---|",
        ]
        for name in res["recall@20"]:
            cells = []
            for m in ("recall@20", "ndcg@20"):
                s = res[m][name]
                cells.append(f"{s['mean']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]")
                cells.append(f"{s['diff']:+.4f} [{s['diff_lo']:+.4f}, {s['diff_hi']:+.4f}]")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("targets"):
        lines += ["Targets (cold Recall@20 ratios): " + json.dumps(result["targets"]), ""]
    for pairs, by_variant in result.get("slots", {}).items():
        for variant, res in by_variant.items():
            lines += [
                f"**slots, {variant}, {pairs}** ({res['n_users']} users; the list of 20 over warm + "
                f"new items, the new ones the reported cold half); differences to the same content "
                f"path blended by score, and to `{variant}` without one",
                "",
                "| content path, policy | Recall@20 [95% CI] | diff to blend | diff to no content path |",
                "|---|---|---|---|",
            ]
            for name, st in res["rows"].items():
                lines.append(
                    f"| {name} | {st['mean']:.4f} [{st['lo']:.4f}, {st['hi']:.4f}] | "
                    f"{st['diff']:+.4f} [{st['diff_lo']:+.4f}, {st['diff_hi']:+.4f}] | "
                    f"{st['none_diff']:+.4f} [{st['none_diff_lo']:+.4f}, {st['none_diff_hi']:+.4f}] |"
                )
            lines.append("")
    if result.get("ordinary"):
        o = result["ordinary"]
        lines += [
            f"Ordinary split ({o['n_val_pairs']} validation pairs, {o['n_cold_val_pairs']} with an item "
            "that has no training interaction):",
            "",
            "| model | content path | val Recall@20 | val NDCG@20 | cold-pair Recall@20 | users with a cold hit |",
            "|---|---|---|---|---|---|",
        ]
        for variant in result["variants"]:
            for label, r in o[variant].items():
                cold = "-" if r["cold_pairs_recall@20"] is None else f"{r['cold_pairs_recall@20']:.4f}"
                lines.append(
                    f"| {variant} | {label} | {r['val_recall@20']:.4f} | {r['val_ndcg@20']:.4f} | {cold} | "
                    f"{r['cold_pairs_hit_users']} of {r['cold_pairs_users']} |"
                )
        slotted = [(v, lab, r) for v in result["variants"] for lab, r in o[v].items() if r.get("slots")]
        if slotted:
            lines += [
                "",
                f"Ordinary split, slot policies ({o['n_items_without_training']} items without training "
                "interactions as the new items):",
                "",
                "| model | content path, policy | val Recall@20 (all pairs) | diff to blend | users with a cold hit |",
                "|---|---|---|---|---|",
            ]
            for variant, label, r in slotted:
                for policy, p in r["slots"].items():
                    st = p["val_recall@20"]
                    lines.append(
                        f"| {variant} | {label}, {policy} | {st['mean']:.4f} | "
                        f"{st['diff']:+.4f} [{st['diff_lo']:+.4f}, {st['diff_hi']:+.4f}] | "
                        f"{p['cold_pairs_hit_users']} of {r['cold_pairs_users']} |"
                    )
    return "\n".join(lines)


def targets(settings: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Each content path's cold Recall@20 over the best non-learned baseline and over random."""
    cold = settings["cold"]["recall@20"]
    best = max(v["mean"] for k, v in cold.items() if k == "content cosine" or k.startswith("kNN average"))
    rnd = cold["random"]["mean"]
    return {
        name: {
            "vs_best_non_learned": round(v["mean"] / best, 3) if best else None,
            "vs_random": round(v["mean"] / rnd, 3) if rnd else None,
        }
        for name, v in cold.items()
        if REFERENCE_SUFFIX in name or name == LEARNED
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--config")
    p.add_argument("--seed", type=int, default=1, help="seed of the item hold-out and of the training")
    p.add_argument("--cold-share", type=float, default=0.2)
    p.add_argument("--report", choices=("val", "test"), default="val", help="which cold half to score")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["id_only"])
    p.add_argument("--knn", type=int, default=10)
    p.add_argument(
        "--content", nargs="+", choices=CONTENT_KINDS, default=["bpr", "profile", "ridge"],
        help="content path kinds to export and score; the first is the reference of the differences",
    )  # fmt: skip
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument(
        "--reuse", action="store_true",
        help="reuse the trained checkpoints an earlier run left under --out (same data, seed, config)",
    )  # fmt: skip
    p.add_argument(
        "--slots", nargs="*", type=int, default=[1, 2, 5],
        help="slot counts s of the hybrid lists: exactly, at least and at most s new items (none: skip)",
    )  # fmt: skip
    p.add_argument(
        "--slots-only", action="store_true",
        help="score the slot policies only (skip the cold / warm / hybrid tables and the targets)",
    )  # fmt: skip
    p.add_argument("--ordinary", action="store_true", help="also the ordinary split's cold pairs")
    p.add_argument(
        "--learned-content", action="store_true",
        help="also rank by a content-only two-tower model trained on the warm pairs (how far the features go)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/coldstart"))
    p.add_argument("overrides", nargs="*", help="key=value trainer overrides for every run")
    args = p.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    split = cold_split(args.data, args.seed, args.cold_share)
    derived = write_derived(args.data, out / "data-cold", split)
    dataset = load_dataset(derived)
    reported = np.asarray(split[f"cold_{args.report}_items"], dtype=np.int64)
    all_cold = np.asarray(split["cold_val_items"] + split["cold_test_items"], dtype=np.int64)
    cold_target = load_split(out / f"cold_{args.report}.json", dataset)
    warm_items = np.setdiff1d(np.arange(dataset.n_items), all_cold)
    settings = {
        "cold": (reported, cold_target),
        "warm": (warm_items, dataset.val),
        "hybrid": (np.union1d(warm_items, reported), _union(dataset.val, cold_target)),
    }
    arts = {
        v: train_variant(derived, out, v, args.config, args.seed, args.overrides, args.content, args.reuse)
        for v in args.variants
    }
    methods = rankings(dataset, arts, all_cold, args.knn, args.seed)
    if args.learned_content:
        methods[LEARNED] = learned_content(dataset, args.seed)
    reference = f"{args.variants[0]}{REFERENCE_SUFFIX} ({args.content[0]})"
    command = " ".join(["python -m benchmarks.coldstart", *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = {
        "command": command,
        "data": str(args.data),
        "seed": args.seed,
        "report": args.report,
        "n_cold_items": {"val": len(split["cold_val_items"]), "test": len(split["cold_test_items"])},
        "variants": args.variants,
        "reference": reference,
        "content_fit": {
            f"{v} ({k})": a.manifest.content["fit"]
            for v, by_kind in arts.items()
            for k, a in by_kind.items()
            if a.manifest.content
        },
        "settings": {}
        if args.slots_only
        else evaluate(methods, dataset, settings, reference, args.bootstrap),
    }
    if not args.slots_only:
        result["targets"] = targets(result["settings"])
    if args.slots:
        pair_sets = {"all pairs": settings["hybrid"][1], "warm pairs": dataset.val, "new pairs": cold_target}
        result["slots"] = evaluate_slots(
            methods, args.variants, dataset, warm_items, reported, pair_sets, args.slots, args.bootstrap
        )
    if args.ordinary:
        result["ordinary"] = ordinary_split(args.data, out, args)
    text = markdown(result)
    (out / "results.md").write_text(text + "\n")
    emit(text, result, out / "results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
