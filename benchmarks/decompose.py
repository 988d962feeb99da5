"""Which part of Eq. 12 carries a trained model's ranking?

    python -m benchmarks.decompose --run RUN --data ../shared/data/tiktok \
        --eval-split ../shared/data/tiktok/val.json [--out decompose.json]

The score h_u . h_i of Eq. 12 is the sum of three parts: the collaborative (ID/GNN) part
e_hat_u . e_hat_i, the modality part c_u . c_i with c = omega * sum_m f^m / ||f^m||, and the cross
terms e_hat_u . c_i + c_u . e_hat_i. This scores the run's best checkpoint on the evaluation split
with the full score and with each part alone (same protocol as training: full ranking, training
items masked), and reports the parts' typical magnitudes. A diagnostic for the quality benchmark,
not a model variant: nothing is retrained.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import emit
from model.graph import observed_rows
from model.losses import gumbel_transform
from training.data import load_dataset, load_split
from training.evaluate import rank_metrics
from training.trainer import TrainingState, load_checkpoint, model_from_checkpoint

REPORTED = ("recall@20", "ndcg@20", "recall@50")


def view_hits(
    topk_items: list[torch.Tensor], target: Any, modalities: list[str], n_items: int
) -> dict[str, Any]:
    """How often a user's Eq. 8 view neighbourhood N_u^m (top-k of Â^m) holds their eval items.

    Per modality: the share of eval (user, item) pairs whose item is in the user's top-k view,
    against k / n_items, the share a random k-item view would hold.
    """
    counts = torch.as_tensor(target.indptr[1:] - target.indptr[:-1])
    users = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    items = torch.as_tensor(target.indices, dtype=torch.int64)
    result: dict[str, Any] = {}
    for name, top in zip(modalities, topk_items, strict=True):
        k = top.shape[1]
        hits = (top[users] == items[:, None]).any(dim=1)
        result[name] = {"k": k, "eval_items_in_view": float(hits.float().mean()), "random_view": k / n_items}
    return result


def gumbel_observed_mass(state: Any, users: torch.Tensor, tau: float, seed: int = 0) -> float:
    """Mean share of a transformed row's mass (Eq. 5's Gumbel-softmax of A[u, :]) on u's observed items.

    At a small τ the softmax is close to one-hot at argmax_i(A[u, i] + g_i): an observed item only
    when its +1 beats the largest Gumbel draw among all |I| items, so the "real" rows fed to the
    discriminator say little about A. ``users`` should have training items.
    """
    observed = observed_rows(state.graph, users, state.n_items)
    transformed = gumbel_transform(observed, tau, torch.Generator().manual_seed(seed))
    return float((transformed * observed).sum(dim=1).mean())


def score_parts(out: Any, omega: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The parts of the Eq. 12 score as (user, item) factor pairs whose inner product is that part."""
    content_u = omega * torch.stack([F.normalize(f, dim=1) for f in out.features.users]).sum(0)
    content_i = omega * torch.stack([F.normalize(f, dim=1) for f in out.features.items]).sum(0)
    id_u, id_i = out.user_id_side, out.item_id_side
    return {
        "full (Eq. 12)": (out.user, out.item),
        "collaborative e_u.e_i": (id_u, id_i),
        "modality c_u.c_i": (content_u, content_i),
        "cross e_u.c_i + c_u.e_i": (torch.cat([id_u, content_u], 1), torch.cat([content_i, id_i], 1)),
    }


@torch.no_grad()
def decompose(run: Path, data: Path, eval_split: Path) -> dict[str, Any]:
    dataset = load_dataset(data)
    target = load_split(eval_split, dataset)
    ckpt = load_checkpoint(run / "best.pt")
    model, views = model_from_checkpoint(ckpt, torch.device("cpu"))
    if not model.modalities:
        raise SystemExit(f"{run}: an ID-only model has no modality part to separate")
    state = TrainingState(dataset, model.config, torch.device("cpu"))
    out = model(state.graph, state.item_raw, views)
    omega = model.config.omega
    parts = score_parts(out, omega)
    id_u, id_i = parts["collaborative e_u.e_i"]
    content_u, content_i = parts["modality c_u.c_i"]
    train = dataset.train
    metrics = {
        name: rank_metrics(u, i, train.indptr, train.indices, target.indptr, target.indices)
        for name, (u, i) in parts.items()
    }
    # Spread of each part's scores over items for the evaluated users: a part whose scores barely
    # vary across items cannot move a ranking however large its mean.
    users = torch.nonzero(torch.as_tensor(target.indptr[1:] - target.indptr[:-1]) > 0).squeeze(1)[:1024]
    spread = {name: float((u[users] @ i.T).std(dim=1).mean()) for name, (u, i) in parts.items()}
    active = state.active_users[:2048]
    return {
        "gumbel": {
            "tau": model.config.gumbel_tau,
            "mass_on_observed_items": gumbel_observed_mass(state, active, model.config.gumbel_tau),
            "observed_share_of_row": float(observed_rows(state.graph, active, state.n_items).mean()),
        },
        "views": view_hits(ckpt["views_topk"], target, model.modalities, dataset.n_items),
        "run": str(run),
        "epoch": ckpt["epoch"],
        "eval_split": str(eval_split),
        "omega": omega,
        "eta": model.config.eta,
        "metrics": metrics,
        "score_std_over_items": spread,
        "norms": {
            "e_hat_u": float(id_u.norm(dim=1).mean()),
            "e_hat_i": float(id_i.norm(dim=1).mean()),
            "c_u": float(content_u.norm(dim=1).mean()),
            "c_i": float(content_i.norm(dim=1).mean()),
        },
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['run']} (epoch {result['epoch']}, ω={result['omega']}, η={result['eta']}) "
        f"on {result['eval_split']}",
        "",
        "| score | " + " | ".join(REPORTED) + " | score std over items |",
        "|---|" + "---|" * (len(REPORTED) + 1),
    ]
    for name, m in result["metrics"].items():
        values = " | ".join(f"{m[k]:.4f}" for k in REPORTED)
        lines.append(f"| {name} | {values} | {result['score_std_over_items'][name]:.3f} |")
    norms = ", ".join(f"{k} {v:.3f}" for k, v in result["norms"].items())
    lines += ["", f"mean norms: {norms}", ""]
    g = result["gumbel"]
    lines.append(
        f"Eq. 5 at τ={g['tau']}: {g['mass_on_observed_items']:.2%} of a transformed row's mass is on the "
        f"user's observed items (they are {g['observed_share_of_row']:.2%} of the row)"
    )
    for name, v in result["views"].items():
        lines.append(
            f"Eq. 8 view ({name}, top-{v['k']}): holds the eval item for {v['eval_items_in_view']:.2%} "
            f"of eval pairs (a random {v['k']}-item view: {v['random_view']:.2%})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a training run directory (best.pt)")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--eval-split", required=True, type=Path)
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = decompose(args.run, args.data, args.eval_split)
    emit(markdown(result), result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
