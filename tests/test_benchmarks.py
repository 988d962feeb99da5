"""The benchmark scripts run end to end on tiny data (their numbers are benchmarks, not tests)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.conftest import FAST_OVERRIDES


def _argv(data, split: str, out, *options: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """A benchmark's command line: data folder, the split of it to score, options, output, then the
    trainer overrides (after ``--out``, so that no list-valued option such as --seeds swallows them)."""
    return ["--data", str(data), "--eval-split", str(data / split), *options, "--out", str(out), *overrides]


def test_quality_benchmark_writes_table_json_and_plot(tiny_data, tmp_path):
    from benchmarks import quality

    out = tmp_path / "q"
    rc = quality.main(
        _argv(
            tiny_data,
            "test.json",
            out,
            "--seeds",
            "1",
            "--variants",
            "full",
            "id_only",
            overrides=(*FAST_OVERRIDES, "epochs=2"),
        )
    )
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("full", 1), ("id_only", 1)]
    full = result["summary"]["full"]
    # one seed: the summary row is that run's own evaluation, not merely a number in 0..1
    assert full["recall@20"] == result["runs"][0]["eval"]["recall@20"] > 0
    assert full["ndcg@20"] == result["runs"][0]["eval"]["ndcg@20"] > 0
    assert full["recall@20_std"] == 0 and full["peak_rss_mb"] > 0
    assert result["runs"][0]["eval"] != result["runs"][1]["eval"]
    assert "| full | 1 |" in (out / "results.md").read_text()
    assert (out / "val_recall20.png").stat().st_size > 1000
    # paired bootstrap intervals over the scored users, for each variant and the difference
    stats = result["intervals"]
    scored = json.loads((tiny_data / "test.json").read_text())
    assert stats["n_users"] == sum(1 for items in scored.values() if items) > 0
    diff = stats["differences"]["id_only - full"]["recall@20"]  # variant - reference
    expected = result["runs"][1]["eval"]["recall@20"] - result["runs"][0]["eval"]["recall@20"]
    assert diff[0] == pytest.approx(expected, abs=1e-9) and diff[1] <= diff[0] <= diff[2]
    full_r20 = stats["variants"]["full"]["recall@20"]
    assert full_r20[0] == pytest.approx(result["runs"][0]["eval"]["recall@20"], abs=1e-9)
    assert "Paired bootstrap 95% intervals" in (out / "results.md").read_text()


def test_fresh_users_benchmark_compares_fold_in_trained_and_popularity(tiny_data, tmp_path):
    from benchmarks import fresh_users

    out = tmp_path / "f"
    rc = fresh_users.main(
        _argv(
            tiny_data,
            "val.json",
            out,
            overrides=(*FAST_OVERRIDES, "epochs=2"),
        )
    )
    assert rc == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["held_out_users"] > 0
    assert set(summary["recall@20"]) == {"fold_in", "trained_normally", "popularity"}
    # the held-out users really were absent from the holdout training data
    train = json.loads((out / "data-holdout" / "train.json").read_text())
    full = json.loads((tiny_data / "train.json").read_text())
    assert len(full) - len(train) == summary["held_out_users"]
    # an existing full-data run can serve as the reference instead of training it again
    rc = fresh_users.main(
        _argv(
            tiny_data,
            "val.json",
            tmp_path / "f2",
            "--reference-run",
            str(out / "run-full"),
            overrides=(*FAST_OVERRIDES, "epochs=2"),
        )
    )
    assert rc == 0
    again = json.loads((tmp_path / "f2" / "results.json").read_text())["summary"]
    assert again["recall@20"]["trained_normally"] == summary["recall@20"]["trained_normally"]
    assert not (tmp_path / "f2" / "run-full").exists()  # the reference was exported, not retrained


def test_quality_merge_tabulates_finished_runs(tiny_data, tmp_path):
    from benchmarks import quality

    first = tmp_path / "a"
    quality.main(
        _argv(
            tiny_data,
            "val.json",
            first,
            "--seeds",
            "4",
            "--variants",
            "no_gt",
            overrides=(*FAST_OVERRIDES, "epochs=1"),
        )
    )
    merged = tmp_path / "m"
    rc = quality.main(_argv(tiny_data, "val.json", merged, "--merge", str(first / "runs" / "no_gt-seed4")))
    assert rc == 0
    a = json.loads((first / "results.json").read_text())["summary"]["no_gt"]
    b = json.loads((merged / "results.json").read_text())["summary"]["no_gt"]
    assert a["recall@20"] == b["recall@20"] and b["seeds"] == [4]


def test_decompose_parts_sum_to_the_model_score_and_full_matches_evaluate(tiny_data, trained_run):
    import torch

    from benchmarks import decompose
    from training.data import load_split
    from training.trainer import (
        BEST,
        TrainingState,
        evaluate_checkpoint,
        load_checkpoint,
        model_from_checkpoint,
    )

    dataset, _, run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / BEST)
    model, views = model_from_checkpoint(ckpt, torch.device("cpu"))
    state = TrainingState(dataset, model.config, torch.device("cpu"))
    with torch.no_grad():
        out = model(state.graph, state.item_raw, views)
    parts = decompose.score_parts(out, model.config.omega)
    full_u, full_i = parts.pop("full (Eq. 12)")
    summed = sum(u @ i.T for u, i in parts.values())
    torch.testing.assert_close(summed, full_u @ full_i.T, rtol=1e-4, atol=1e-4)

    result = decompose.decompose(run_dir, tiny_data, tiny_data / "test.json")
    reference = evaluate_checkpoint(run_dir / BEST, dataset, load_split(tiny_data / "test.json", dataset))
    assert result["metrics"]["full (Eq. 12)"]["recall@20"] == reference["recall@20"]
    assert set(result["metrics"]) == {
        "full (Eq. 12)",
        "collaborative e_u.e_i",
        "modality c_u.c_i",
        "cross e_u.c_i + c_u.e_i",
    }


def test_sensitivity_sweep_shares_the_base_run_and_plots_each_setting(tiny_data, tmp_path):
    from benchmarks import sensitivity

    out = tmp_path / "s"
    rc = sensitivity.main(
        _argv(
            tiny_data,
            "val.json",
            out,
            "--seeds",
            "1",
            "--jobs",
            "2",
            "--sweep",
            "n_layers=1,2",
            "--sweep",
            "zeta=1.0,0",
            overrides=(*FAST_OVERRIDES, "epochs=2"),
        )
    )
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    # n_layers=2 and zeta=1.0 are the defaults: one shared "base" run, three trainings in all
    assert sorted(r["variant"] for r in result["runs"]) == ["base", "n_layers=1", "zeta=0"]
    assert result["points"]["n_layers"] == [["1", "n_layers=1"], ["2", "base"]]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "base-seed1",
        "n_layers=1-seed1",
        "zeta=0-seed1",
    ]
    one_layer = json.loads((out / "runs" / "n_layers=1-seed1" / "eval.json").read_text())
    assert result["summary"]["n_layers=1"]["recall@20"] == one_layer["recall@20"]
    assert "| 2 (base) |" in (out / "results.md").read_text()
    assert (out / "sensitivity.png").stat().st_size > 1000


def test_sensitivity_rejects_a_bad_sweep_before_training(tiny_data, tmp_path):
    import argparse

    import pytest

    from benchmarks import sensitivity
    from training.config import ConfigError

    with pytest.raises(argparse.ArgumentTypeError):
        sensitivity.parse_sweep("n_layers")
    with pytest.raises(ConfigError, match="n_layer"):
        sensitivity.plan(None, [], [("n_layer", ["1"])])


def test_content_profiles_match_a_per_user_loop():
    import numpy as np

    from benchmarks.content_signal import content_profiles

    rng = np.random.default_rng(3)
    feats = rng.standard_normal((7, 4))
    lists = [[0, 3], [], [6], [1, 2, 5]]  # a user without items gets a zero profile
    indptr = np.cumsum([0] + [len(x) for x in lists])
    indices = np.array([i for x in lists for i in x])
    got = content_profiles(indptr, indices, feats)
    centred = feats - feats.mean(0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    for u, items in enumerate(lists):
        want = unit[items].sum(0) if items else np.zeros(4)
        want = want / max(np.linalg.norm(want), 1e-12)
        np.testing.assert_allclose(got[u], want, atol=1e-12)


def test_content_signal_reports_each_modality_popularity_and_random(tiny_data, tmp_path):
    from benchmarks import content_signal

    assert content_signal.main(_argv(tiny_data, "val.json", tmp_path / "c.json")) == 0
    results = json.loads((tmp_path / "c.json").read_text())["results"]
    assert "popularity" in results and "random" in results
    assert any(k.startswith("content cosine: all") for k in results)
    # the synthetic data plants item features that predict interactions: content beats random
    assert results["content cosine: all (concatenated)"]["recall@20"] > results["random"]["recall@20"]


def test_view_hits_counts_eval_items_inside_each_users_view():
    import numpy as np
    import pytest
    import torch

    from benchmarks.decompose import view_hits

    class Split:  # CSR over users: user 0 -> [4], user 1 -> [], user 2 -> [0, 7]
        indptr = np.array([0, 1, 1, 3])
        indices = np.array([4, 0, 7])

    top = torch.tensor([[4, 5], [1, 2], [7, 3]])  # user 0 holds 4 (hit), user 2 holds 7 not 0
    got = view_hits([top], Split(), ["image"], n_items=10)
    assert got["image"]["k"] == 2 and got["image"]["random_view"] == 0.2
    assert got["image"]["eval_items_in_view"] == pytest.approx(2 / 3)


def test_gumbel_observed_mass_follows_the_gumbel_max_probability(tiny_data):
    import math

    import numpy as np
    import torch

    from benchmarks.decompose import gumbel_observed_mass
    from model.config import MMSSLConfig
    from training.data import load_dataset
    from training.trainer import TrainingState

    dataset = load_dataset(tiny_data)
    config = MMSSLConfig(n_users=dataset.n_users, n_items=dataset.n_items, modality_dims={})
    state = TrainingState(dataset, config, torch.device("cpu"))
    users = state.active_users
    # At τ -> 0 the row is one-hot at argmax(A + g): an observed item with probability
    # n e / (n e + |I| - n) for a user with n observed items (Gumbel-max trick).
    n = np.diff(dataset.train.indptr)[users.numpy()]
    expected = float(np.mean(n * math.e / (n * math.e + dataset.n_items - n)))
    draws = [gumbel_observed_mass(state, users, tau=1e-4, seed=s) for s in range(20)]
    assert abs(float(np.mean(draws)) - expected) < 0.03
    # a large τ makes the row uniform: the observed items hold n / |I| of it
    flat = gumbel_observed_mass(state, users, tau=1e3)
    assert abs(flat - float(np.mean(n / dataset.n_items))) < 0.01


def test_bootstrap_interval_matches_the_normal_approximation_and_pairs_users():
    import numpy as np

    from benchmarks.common import bootstrap_interval, paired_intervals

    rng = np.random.default_rng(0)
    hits = (rng.random(4000) < 0.3).astype(float)
    mean, low, high = bootstrap_interval(hits, n_boot=2000, seed=1)
    se = hits.std() / np.sqrt(hits.size)
    assert mean == hits.mean() and low < mean < high
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.1)  # independent reference: normal CI
    assert bootstrap_interval(np.full(50, 0.25)) == (0.25, 0.25, 0.25)
    # paired: b is a plus a small per-user gain; the unpaired intervals overlap, the paired one is > 0
    a = hits
    b = a.copy()
    b[rng.choice(a.size, 40, replace=False)] = 1.0
    stats = paired_intervals({"b": {"r": b}, "a": {"r": a}}, ["r"], reference="b", n_boot=1000)
    assert stats["n_users"] == 4000
    va, vb = stats["variants"]["a"]["r"], stats["variants"]["b"]["r"]
    assert vb[1] < va[2]  # overlap
    diff = stats["differences"]["a - b"]["r"]  # variant - reference: a loses the gain of b
    assert diff[0] == pytest.approx(a.mean() - b.mean()) and diff[2] < 0
    with pytest.raises(ValueError, match="different users"):
        paired_intervals({"a": {"r": a}, "b": {"r": b[:10]}}, ["r"], reference="a")


def test_tuning_split_moves_one_item_per_eligible_user_and_loads(tiny_data, tmp_path):
    from benchmarks.common import carve_tuning_split
    from training.data import load_dataset

    original = json.loads((tiny_data / "train.json").read_text())
    out = carve_tuning_split(tiny_data, tmp_path / "tune", seed=3)
    train = json.loads((out / "train.json").read_text())
    tune = json.loads((out / "val.json").read_text())
    assert set(train) == set(original)
    for user, items in original.items():
        if len(items) >= 3:
            assert len(tune[user]) == 1 and sorted(train[user] + tune[user]) == sorted(items)
        else:
            assert user not in tune and train[user] == items
    assert (
        carve_tuning_split(tiny_data, tmp_path / "again", seed=3).joinpath("val.json").read_text()
        == (out / "val.json").read_text()
    )
    assert (
        json.loads(carve_tuning_split(tiny_data, tmp_path / "other", seed=4).joinpath("val.json").read_text())
        != tune
    )
    ds = load_dataset(out)  # features linked, the folder is a valid dataset
    assert ds.n_items == load_dataset(tiny_data).n_items and ds.val.nnz == sum(map(len, tune.values()))


def test_scaled_data_has_s_times_the_users_and_items_and_disjoint_splits(tiny_data, tmp_path):
    from benchmarks.scale import write_scaled
    from training.data import load_dataset

    base = load_dataset(tiny_data)
    shape = write_scaled(tiny_data, 3, tmp_path / "x3")
    ds = load_dataset(tmp_path / "x3")  # the loader validates: in range, disjoint, no duplicates
    assert (
        (ds.n_users, ds.n_items)
        == (3 * base.n_users, 3 * base.n_items)
        == (shape["n_users"], shape["n_items"])
    )
    assert ds.train.nnz == shape["n_train"]
    assert 1.5 * base.train.nnz < ds.train.nnz <= 3 * base.train.nnz  # repeats dropped, scale kept
    assert set(ds.features) == {"image", "audio"} and ds.features["image"].shape == (ds.n_items, 128)


def test_scale_benchmark_reports_each_scale(tiny_data, tmp_path):
    from benchmarks import scale

    out = tmp_path / "scale.json"
    rc = scale.main(
        ["--data", str(tiny_data), "--scales", "1", "2", "--steps", "1", "--out", str(out), *FAST_OVERRIDES]
    )
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["scale"] for r in rows] == [1, 2]
    assert rows[1]["n_items"] == 2 * rows[0]["n_items"] and rows[1]["batch_size"] == 2 * rows[0]["batch_size"]
    assert rows[0]["steps_per_epoch"] == rows[1]["steps_per_epoch"]  # --scale-batch: same passes
    assert all(r["step_s"] > 0 and r["refresh_s"] > 0 and r["peak_rss_mb"] > 50 for r in rows)


def test_scale_write_gives_the_datasets_the_benchmark_measures(tiny_data, tmp_path):
    """--write: the same folders as the benchmark's own (write_scaled), to train whole epochs on."""
    from benchmarks import scale
    from benchmarks.scale import write_scaled

    assert scale.main(["--data", str(tiny_data), "--scales", "1", "2", "--write", str(tmp_path / "w")]) == 0
    write_scaled(tiny_data, 2, tmp_path / "ref")
    for name in ("train.json", "val.json"):
        assert (tmp_path / "w" / "x2" / name).read_text() == (tmp_path / "ref" / name).read_text()
    assert (tmp_path / "w" / "x1" / "train.json").exists() and not (tmp_path / "w" / "x4").exists()


def test_tuning_split_keeps_an_imported_folders_external_ids(tmp_path):
    from benchmarks.common import carve_tuning_split

    src = tmp_path / "src"
    src.mkdir()
    (src / "train.json").write_text(json.dumps({"0": [0, 1, 2], "1": [1, 2]}))
    (src / "val.json").write_text(json.dumps({"0": [3]}))
    (src / "item_ids.json").write_text(json.dumps(["a", "b", "c", "d"]))
    (src / "user_ids.json").write_text(json.dumps(["u0", "u1"]))
    out = carve_tuning_split(src, tmp_path / "tune", seed=0)
    for name in ("item_ids.json", "user_ids.json"):
        assert json.loads((out / name).read_text()) == json.loads((src / name).read_text())
    assert sum(len(v) for v in json.loads((out / "val.json").read_text()).values()) == 1  # only user 0 has 3


def test_scaled_data_does_not_depend_on_the_hash_seed(tiny_data, tmp_path):
    # the base users were a set of strings, iterated in a per-process hash order: the degrees
    # drawn, hence the whole dataset, changed from run to run
    import os
    import subprocess
    import sys
    from pathlib import Path

    texts = []
    for seed in ("1", "2"):
        out = tmp_path / f"h{seed}"
        code = f"from pathlib import Path; from benchmarks.scale import write_scaled; write_scaled(Path({str(tiny_data)!r}), 2, Path({str(out)!r}))"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).resolve().parents[1]
        )
        texts.append((out / "train.json").read_text())
    assert texts[0] == texts[1]


def test_scale_benchmark_reports_view_recall_and_the_validation_sample(tiny_data, tmp_path):
    from benchmarks import scale

    out = tmp_path / "scale.json"
    overrides = [*FAST_OVERRIDES, "view_index=ivf", "view_ivf_probe=1000", "eval_users=30", "cl_users=16"]
    rc = scale.main(
        ["--data", str(tiny_data), "--scales", "1", "--steps", "1", "--out", str(out), *overrides]
    )
    assert rc == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["view_index"] == "ivf" and row["eval_users"] == 30
    assert row["view_recall"] == [1.0, 1.0]  # every cell probed: the exact top-k


def test_view_recall_is_one_when_every_cell_is_probed(tiny_data, tmp_path):
    from benchmarks import view_recall

    out = tmp_path / "recall.json"
    args = ["--data", str(tiny_data), "--probes", "1", "38", "--out", str(out), *FAST_OVERRIDES]
    assert view_recall.main(args) == 0
    result = json.loads(out.read_text())
    assert result["lists"] == 38  # 4 sqrt(90 items)
    one, every = result["rows"]
    assert every["probe"] == 38 and every["recall"] == [1.0, 1.0]
    assert all(0.0 < r <= 1.0 for r in one["recall"])


def test_quality_defined_variants_train_their_overrides_and_set_the_reference(tiny_data, tmp_path):
    from benchmarks import quality

    out = tmp_path / "d"
    rc = quality.main(
        _argv(
            tiny_data,
            "val.json",
            out,
            "--seeds",
            "1",
            "--define",
            "small:embed_dim=8,n_heads=2",
            "--variants",
            "id_only",
            "small",
            "--reference",
            "small",
            overrides=(*FAST_OVERRIDES, "epochs=1"),
        )
    )
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in result["runs"]] == ["id_only", "small"]
    import torch

    ckpt = torch.load(out / "runs" / "small-seed1" / "best.pt", weights_only=False)
    assert ckpt["model_config"]["embed_dim"] == 8 and ckpt["model_config"]["n_heads"] == 2
    assert set(result["intervals"]["differences"]) == {"id_only - small"}
    for bad in (["--define", "nocolon"], ["--define", "full:epochs=1"], ["--variants", "nope"]):
        with pytest.raises(SystemExit):
            quality.main(_argv(tiny_data, "val.json", tmp_path / "bad", *bad))
    with pytest.raises(SystemExit):  # a reference that is not run
        quality.main(
            _argv(tiny_data, "val.json", tmp_path / "bad", "--variants", "id_only", "--reference", "full")
        )


def test_train_speed_profiles_by_input_shape(tiny_data, tmp_path, capsys):
    """--by-shape: the profiler's table gains the input shapes, which tell a (|U|, d) product from
    an (|I|, d) one; the phase timings are written as without it."""
    from benchmarks import train_speed

    out = tmp_path / "speed.json"
    args = ["--data", str(tiny_data), "--steps", "1", "--out", str(out), *FAST_OVERRIDES]
    assert train_speed.main([*args, "--by-shape"]) == 0
    printed = capsys.readouterr().out
    assert "Input Shapes" in printed
    # a (n_users, d) or (n_items, d) operand of the tiny data (120 users, 90 items, d = 16)
    assert re.search(r"\[(120|90), 16\]", printed)
    result = json.loads(out.read_text())
    assert set(result["phase_ms"]) == {"forward", "adversarial", "backward"}
    assert train_speed.main(args) == 0
    assert "Input Shapes" not in capsys.readouterr().out


def test_spmm_benchmark_times_both_products_of_each_operator(tiny_data, tmp_path, capsys):
    """benchmarks.spmm: one row per operator and width, both timings positive, and the two
    products' results agree (the difference it reports is the real one: within float rounding)."""
    from benchmarks import spmm

    out = tmp_path / "spmm.json"
    assert (
        spmm.main(["--data", str(tiny_data), "--dims", "8", "16", "--repeats", "2", "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert [(r["operator"].split()[0], r["d"]) for r in result["rows"]] == [
        ("user_mean", 8),
        ("user_mean", 16),
        ("item_mean", 8),
        ("item_mean", 16),
    ]
    for r in result["rows"]:
        assert r["csr_kernel_ms"] > 0 and r["embedding_bag_ms"] > 0 and r["nnz"] > 0
        assert r["max_abs_diff"] < 1e-5
    assert "| user_mean (U x I) | 8 |" in capsys.readouterr().out


def test_serving_ratio_interval_resamples_paired_rounds():
    """The items benchmark's B/A interval: a percentile bootstrap of mean(B) / mean(A) over rounds
    resampled in pairs, checked against a loop over the same resampled indices."""
    from benchmarks.serve.items import ratio_interval

    a = [100.0, 120.0, 90.0, 110.0, 105.0]
    b = [95.0, 118.0, 80.0, 100.0, 104.0]
    got = ratio_interval(a, b, resamples=500, seed=3)
    pick = np.random.default_rng(3).integers(0, 5, size=(500, 5))
    ratios = [np.mean([b[i] for i in row]) / np.mean([a[i] for i in row]) for row in pick]
    assert got == [round(float(x), 3) for x in np.percentile(ratios, [2.5, 97.5])]
    assert got[0] <= sum(b) / sum(a) <= got[1] < 1.0
    # B proportional to A round by round: every resample gives the same ratio, whatever the drift
    assert ratio_interval(a, [0.9 * x for x in a]) == [0.9, 0.9]
    assert ratio_interval(a[:2], b[:2]) is None
    with pytest.raises(ValueError, match="rounds"):
        ratio_interval(a, b[:4])


def test_serving_summary_means_ratios_and_the_interval_unit():
    """The items benchmark's summary against hand-computed means and ratios; its interval
    resamples generations from 3 of them, rounds below."""
    from benchmarks.serve.items import ratio_interval, summarise

    def run(server, gen, rnd, rps, p99, cpu):
        return {"server": server, "generation": gen, "round": rnd, "rps": rps,
                "latency_ms": {"p99": p99}, "api_cpu_ms_per_request": cpu}  # fmt: skip

    runs = [run(side, g, r, rps, 10.0 + g, 1.0) for g in range(3) for r in range(2)
            for side, rps in (("A: none", 100.0 + g + r), ("B: 10 added", 90.0 + g))]  # fmt: skip
    s = summarise(runs, 3)
    assert s["rps_a"] == round(np.mean([100 + g + r for g in range(3) for r in range(2)]), 3) == 101.5
    assert s["rps_b"] == 91.0 and s["rps_b_over_a"] == round(91.0 / 101.5, 3)
    assert s["p99_ms_a"] == s["p99_ms_b"] == 11.0 and s["p99_b_over_a"] == 1.0
    assert s["api_cpu_b_over_a"] == 1.0 and s["api_cpu_b_over_a_ci95"] == [1.0, 1.0]
    assert s["interval_unit"] == "generation"
    by_gen = [[np.mean([100.5 + g]) for g in range(3)], [90.0 + g for g in range(3)]]
    assert s["rps_b_over_a_ci95"] == ratio_interval(by_gen[0], by_gen[1])
    two = summarise([r for r in runs if r["generation"] < 2], 2)
    assert two["interval_unit"] == "round"
    a = [100.0 + g + r for g in range(2) for r in range(2)]
    b = [90.0 + g for g in range(2) for r in range(2)]
    assert two["rps_b_over_a_ci95"] == ratio_interval(a, b)
