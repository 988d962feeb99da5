"""The trainer's sparse products: PyTorch's CPU CSR kernel against ``model.graph.csr_matmul``.

    python -m benchmarks.spmm --data ../shared/data/tiktok --dims 64 128 --threads 1

Builds the dataset's Eq. 2 / Eq. 10 operators (``model.graph.build_interaction_graph``, the
trainer's) and times, per operator and width d, ``matrix @ dense`` (PyTorch's CSR kernel) and
``csr_matmul`` (a weighted ``embedding_bag`` over the CSR arrays, what ``spmm`` runs on CPU), each
the median of ``--repeats`` calls after one warm-up call, with the largest absolute difference
between the two results. Prints a markdown table; ``--out`` writes the JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import emit
from model.graph import build_interaction_graph, csr_matmul
from training.data import load_dataset


def median_ms(fn: Any, matrix: torch.Tensor, dense: torch.Tensor, repeats: int) -> float:
    fn(matrix, dense)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(matrix, dense)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def kernel_product(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    return matrix @ dense


def measure(data: Path, dims: list[int], repeats: int, seed: int = 0) -> dict[str, Any]:
    dataset = load_dataset(data)
    train = dataset.train
    users = torch.repeat_interleave(torch.arange(dataset.n_users), torch.as_tensor(train.indptr).diff())
    items = torch.as_tensor(train.indices, dtype=torch.int64)
    graph = build_interaction_graph(users, items, dataset.n_users, dataset.n_items)
    operators = {"user_mean (U x I)": graph.user_mean, "item_mean (I x U)": graph.item_mean}
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name, matrix in operators.items():
        for d in dims:
            dense = torch.randn(matrix.shape[1], d, generator=gen)
            kernel = median_ms(kernel_product, matrix, dense, repeats)
            bag = median_ms(csr_matmul, matrix, dense, repeats)
            diff = float((matrix @ dense - csr_matmul(matrix, dense)).abs().max())
            rows.append({"operator": name, "d": d, "nnz": int(matrix.values().numel()),
                         "csr_kernel_ms": round(kernel, 3), "embedding_bag_ms": round(bag, 3),
                         "speedup": round(kernel / bag, 2), "max_abs_diff": diff})  # fmt: skip
    return {"data": str(data), "n_users": dataset.n_users, "n_items": dataset.n_items,
            "threads": torch.get_num_threads(), "repeats": repeats, "rows": rows}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['n_users']} users x {result['n_items']} items, {result['threads']} thread(s), "
        f"median of {result['repeats']} calls",
        "",
        "| operator | d | nnz | CSR kernel ms | embedding bag ms | speed-up | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['operator']} | {r['d']} | {r['nnz']} | {r['csr_kernel_ms']:.3f} | "
            f"{r['embedding_bag_ms']:.3f} | {r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spmm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.data, args.dims, args.repeats)
    emit(markdown(result), result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
