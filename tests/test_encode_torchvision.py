"""python -m training encode --encoder torchvision:NAME[@WEIGHTS]: a randomly initialised resnet18 saved
as a local state dict, encoded through the real CLI, against a direct forward written out layer by
layer on an independently built preprocessing pipeline; and the one-line failure without the hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import load_dataset
from training.encode import EncodeError, image_contents, make_encoder
from training.encode.encoders import import_torchvision
from training.importers import prepare, write_dataset
from training.importers.tabular import read_tabular

ROOT = Path(__file__).resolve().parents[1]
ITEMS = ["toy", "heat", "golden", "cold"]  # "cold" has no image


@pytest.fixture
def data(tmp_path) -> Path:
    rows = "".join(f"u{u},{i}\n" for u in range(4) for i in ITEMS[: 3 + (u == 0)])
    (tmp_path / "log.csv").write_text("user,item\n" + rows)
    write_dataset(prepare(read_tabular(tmp_path / "log.csv"), split="random", seed=0), tmp_path / "ds")
    assert load_dataset(tmp_path / "ds").item_ids == ITEMS
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for item, size in zip(ITEMS[:3], [(300, 260), (64, 96), (256, 256)], strict=True):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{item}.png")
    return tmp_path


@pytest.fixture
def weights(tmp_path) -> Path:
    import_torchvision()
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path / "resnet18_random.pth"
    torch.save(resnet18().state_dict(), path)
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def encode_cli(data: Path, spec: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "encode", "--data", str(data / "ds"), "--kind", "image", "--encoder", spec,
        "--images", str(data / "img"), "--no-progress", "--force", *extra,
    )  # fmt: skip


def reference_features(weights: Path, paths: list[Path]) -> np.ndarray:
    """resnet18 up to its global average pool, by hand, on Resize(256)/CenterCrop(224)/ImageNet norm."""
    import torch
    from torchvision import transforms
    from torchvision.models import resnet18

    net = resnet18()
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    pipeline = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    x = torch.stack([pipeline(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return torch.flatten(net.avgpool(x), 1).numpy()


def test_local_weights_through_the_cli_match_a_direct_forward(data, weights):
    r = encode_cli(data, f"torchvision:resnet18@{weights}")
    assert r.returncode == 0, r.stderr
    feats = np.load(data / "ds" / "image_feat.npy")
    assert feats.dtype == np.float32 and feats.shape == (4, 512)
    assert not feats[3].any() and all(feats[k].any() for k in range(3))
    report = json.loads((data / "ds" / "image_encode_report.json").read_text())
    assert report["missing_items"] == ["cold"] and report["encoder"] == f"torchvision:resnet18@{weights}"
    paths, _ = image_contents(ITEMS, folder=data / "img")
    np.testing.assert_allclose(feats[:3], reference_features(weights, paths[:3]), rtol=1e-4, atol=1e-5)
    again = encode_cli(data, f"torchvision:resnet18@{weights}")
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(np.load(data / "ds" / "image_feat.npy"), feats)  # deterministic
    one_by_one = encode_cli(data, f"torchvision:resnet18@{weights}", "--batch", "1")
    assert one_by_one.returncode == 0, one_by_one.stderr
    np.testing.assert_allclose(np.load(data / "ds" / "image_feat.npy"), feats, rtol=1e-4, atol=1e-5)


def test_the_encoder_is_in_eval_mode_and_its_head_is_gone(weights):
    import torch

    encoder = make_encoder("image", f"torchvision:resnet18@{weights}")
    assert not encoder.model.training and isinstance(encoder.model.fc, torch.nn.Identity)


def test_without_the_hub_a_model_name_fails_in_one_line_naming_it_and_the_local_option(data, tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "torch-home")}  # no cached weights
    r = cli("encode", "--data", str(data / "ds"), "--kind", "image", "--encoder", "torchvision:resnet18",
            "--images", str(data / "img"), env=env)  # fmt: skip
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert "'resnet18'" in errors[0] and "model hub" in errors[0]
    assert "--encoder torchvision:resnet18@/path/to/weights.pth" in errors[0]
    assert not (data / "ds" / "image_feat.npy").exists()


def test_bad_weights_unknown_model_and_undecodable_image_are_one_line_errors(data, weights, tmp_path):
    import torch

    other = tmp_path / "other.pth"
    torch.save({"not": torch.zeros(1)}, other)
    for spec, message in [
        (f"torchvision:resnet18@{other}", "other.pth: not a state dict of torchvision resnet18"),
        (f"torchvision:resnet18@{tmp_path / 'absent.pth'}", "absent.pth: weights file not found"),
        ("torchvision:no_such_net_i14", "torchvision has no model 'no_such_net_i14'"),
    ]:
        with pytest.raises(EncodeError, match=message) as info:
            make_encoder("image", spec)
        assert "\n" not in str(info.value)
    (data / "img" / "cold.jpg").write_bytes(b"not an image")
    r = encode_cli(data, f"torchvision:resnet18@{weights}")
    assert r.returncode == 2 and "cold.jpg: cannot decode image" in r.stderr


def test_timm_local_weights_match_its_own_forward_and_the_hub_fails_in_one_line(data, tmp_path):
    import_torchvision()
    import timm
    import torch
    from timm.data import resolve_data_config
    from torchvision import transforms

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False).eval()  # with its 1000-class head
    path = tmp_path / "timm_resnet18.pth"
    torch.save(net.state_dict(), path)
    r = encode_cli(data, f"timm:resnet18@{path}")
    assert r.returncode == 0, r.stderr
    feats = np.load(data / "ds" / "image_feat.npy")
    assert feats.dtype == np.float32 and feats.shape == (4, 512) and not feats[3].any()
    cfg = resolve_data_config({}, model=net)  # resnet18: 224 crop at crop_pct 0.95, bicubic
    pipeline = transforms.Compose(
        [
            transforms.Resize(
                int(cfg["input_size"][1] / cfg["crop_pct"]), transforms.InterpolationMode.BICUBIC
            ),
            transforms.CenterCrop(cfg["input_size"][1:]),
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    paths, _ = image_contents(ITEMS, folder=data / "img")
    x = torch.stack([pipeline(Image.open(p).convert("RGB")) for p in paths[:3]])
    with torch.no_grad():
        expected = net.forward_head(net.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(feats[:3], expected, rtol=1e-4, atol=1e-5)
    again = encode_cli(data, f"timm:resnet18@{path}")
    assert again.returncode == 0 and np.array_equal(np.load(data / "ds" / "image_feat.npy"), feats)
    offline = cli("encode", "--data", str(data / "ds"), "--kind", "image", "--encoder", "timm:resnet18",
                  "--images", str(data / "img"), "--force", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})  # fmt: skip
    errors = [ln for ln in offline.stderr.splitlines() if ln.startswith("error:")]
    assert offline.returncode == 2 and len(errors) == 1, offline.stderr
    assert "'resnet18'" in errors[0] and "--encoder timm:resnet18@/path/to/weights.pth" in errors[0]
