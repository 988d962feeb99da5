"""Where a training step spends its time: per-phase timings and the torch.profiler top operators.

    python -m benchmarks.train_speed --data ../shared/data/tiktok --config configs/tiktok.yaml --steps 10

Phases of one step (as in ``training.trainer.train``): the full-graph forward (the held-out batch
edges' Eq. 2 operators, projection, Eq. 2, Eq. 8 views, Eq. 9 attention, Eq. 10 GNN, Eq. 12), the
adversarial step (Eq. 3-7: one
discriminator update + L_G), and the model backward + optimiser step; plus one view refresh.
Prints a table and writes JSON to ``--out``. ``--by-shape`` groups the profiler's operators by their
input shapes, which tells a (|U|, d) product from an (|I|, d) one (the profile is over 3 steps).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from model import MMSSL
from training import allocator
from training.config import load_config
from training.data import load_dataset
from training.trainer import (
    TrainingState,
    adversarial_step,
    make_optimizers,
    model_config_for,
    refresh_views,
    resolve_device,
    step_losses,
    view_refresh_interval,
)


class Bench:
    """A model, its optimisers and state on ``dataset``, and ``step()``: one training step as
    ``training.trainer.train`` runs it (held-out batch edges included), timed by phase."""

    def __init__(self, dataset: Any, cfg: Any, device: torch.device) -> None:
        tc = cfg.train
        self.cfg, self.device = cfg, device
        allocator.tune()  # as training.trainer.train does
        self.mc = model_config_for(dataset, cfg.model)
        self.state = TrainingState(dataset, self.mc, device)
        torch.manual_seed(tc.seed)
        self.model = MMSSL(self.mc).to(device).train()
        self.opt_model, self.opt_d = make_optimizers(self.model, cfg, device)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.views = refresh_views(self.model, self.state, tc)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self) -> tuple[float, float, float]:
        """(forward, adversarial, backward) seconds of one step."""
        tc, state, model = self.cfg.train, self.state, self.model
        idx = torch.randint(0, state.users.numel(), (tc.batch_size,), generator=self.gen, device=self.device)
        users, pos = state.users[idx], state.items[idx]
        neg = state.sample_negatives(users, self.gen)
        self.sync()
        t0 = time.perf_counter()
        with allocator.heap_only():  # as training.trainer.train runs a step
            graph = state.graph_without(idx) if tc.holdout_batch_edges and model.modalities else state.graph
            out = model(graph, state.item_raw, self.views)
            self.sync()
            t1 = time.perf_counter()
            batch_users = torch.unique(users)
            loss_g = torch.zeros((), device=self.device)
            if self.opt_d is not None:
                loss_g, _ = adversarial_step(model, out, state, batch_users, self.opt_d, self.cfg, self.gen)
            self.sync()
            t2 = time.perf_counter()
            loss_bpr, loss_cl, loss_l2 = step_losses(model, out, users, pos, neg, batch_users, tc, self.gen)
            loss = loss_bpr + tc.cl_weight * loss_cl + tc.g_weight * loss_g + tc.l2_weight * loss_l2
            self.opt_model.zero_grad()
            loss.backward()
            self.opt_model.step()
            self.sync()
            del out, graph
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    def refresh(self) -> float:
        """Seconds of one Eq. 8 view refresh (top-k over all items for every active user)."""
        self.sync()
        t = time.perf_counter()
        self.views = refresh_views(self.model, self.state, self.cfg.train)
        self.sync()
        return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/train_speed.json")
    p.add_argument(
        "--by-shape",
        action="store_true",
        help="group the profiler's operators by input shape (which tensors an operator's time goes to)",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    tc = cfg.train
    device = resolve_device(tc.device)
    if device.type == "cpu" and tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)  # as the trainer does
    bench = Bench(load_dataset(args.data), cfg, device)
    state, step = bench.state, bench.step
    for _ in range(2):
        step()
    timings = [step() for _ in range(args.steps)]
    refresh_s = bench.refresh()
    phases = {
        name: statistics.mean(x[i] for x in timings)
        for i, name in enumerate(("forward", "adversarial", "backward"))
    }
    steps_per_epoch = math.ceil(state.users.numel() / tc.batch_size)
    refresh_every = view_refresh_interval(tc, steps_per_epoch)
    epoch_est = (
        steps_per_epoch * sum(phases.values()) + math.ceil(steps_per_epoch / refresh_every) * refresh_s
    )
    with profile(
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else []),
        record_shapes=args.by_shape,
    ) as prof:
        for _ in range(3):
            step()
    table = prof.key_averages(group_by_input_shape=args.by_shape).table(
        sort_by="self_cpu_time_total" if device.type == "cpu" else "self_cuda_time_total",
        row_limit=20 if args.by_shape else 12,
    )
    print(
        f"device {device}, threads {torch.get_num_threads()}, {steps_per_epoch} steps/epoch of {tc.batch_size}"
    )
    for name, value in phases.items():
        print(f"  {name:<12} {1000 * value:8.1f} ms/step")
    print(f"  {'refresh':<12} {1000 * refresh_s:8.1f} ms every {refresh_every} steps")
    print(f"  estimated epoch (training only): {epoch_est:.1f} s")
    print(table)
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "steps_per_epoch": steps_per_epoch,
        "phase_ms": {k: 1000 * v for k, v in phases.items()},
        "refresh_ms": 1000 * refresh_s,
        "epoch_estimate_s": epoch_est,
        "config": cfg.to_dict(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
