"""``torchrun`` with 2 CPU processes (gloo): the ranks stay in sync and follow the single-process run."""
import json
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

RECIPE = {"name": "tiny", "stem": {"type": "conv", "kernel_size": 3, "stride": 2, "padding": 1},
          "downsample": {"type": "conv"}, "block": {"norm": {"type": "groupnorm", "num_groups": 1}},
          "stages": [{"depth": 1, "dim": 8}, {"depth": 1, "dim": 16, "token_mixer": "sepconv"}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(recipe, out, batch: int, nproc: int, extra: list[str] | None = None) -> dict:
    args = ["-m", "metablocks", "train", str(recipe), "--data", "synthetic", "--img-size", "16", "--epochs", "2",
            "--batch-size", str(batch), "--crop-padding", "0", "--threads", "1", "--out", str(out), "--no-progress",
            *(extra or [])]
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}"] if nproc > 1 else []
    result = subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync_and_match_one(tmp_path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps(RECIPE))
    ddp = _train(recipe, tmp_path / "ddp", batch=16, nproc=2)  # 2 x 16 per step
    single = _train(recipe, tmp_path / "single", batch=32, nproc=1)  # the same 32 images per step in one process
    assert ddp["world_size"] == 2 and ddp["ddp_in_sync"] is True and single["world_size"] == 1
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        # equal up to float summation order (AdamW's normalized steps magnify it a little on near-zero gradients)
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)
    for x, y in zip(ddp["curves"], single["curves"]):
        assert x["val_top1"] == pytest.approx(y["val_top1"], abs=0.5)
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-4)


def _folder(root) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(20):
            Image.fromarray((rng.random((18, 18, 3)) * 100 + 50 * c).astype(np.uint8)).save(root / f"c{c}" / f"{i}.jpg")


@pytest.mark.slow
def test_two_processes_streaming_an_image_folder_with_timm_transforms_match_one(tmp_path) -> None:
    """The streaming loader shards each global batch over the ranks and seeds each image's random-resized crop and
    flip by its index, so 2 x 8 images per step under torchrun train like 16 in one process."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps(RECIPE))
    _folder(tmp_path / "images")
    extra = ["--data", "imagefolder", "--data-path", str(tmp_path / "images"), "--workers", "2", "--aa",
             "rand-m9-mstd0.5-inc1", "--track"]
    ddp = _train(recipe, tmp_path / "ddp", batch=8, nproc=2, extra=extra)
    single = _train(recipe, tmp_path / "single", batch=16, nproc=1, extra=extra)
    assert ddp["world_size"] == 2 and ddp["ddp_in_sync"] is True and ddp["data_loader"] == "stream (2 workers)"
    assert ddp["train_size"] == single["train_size"] == 64
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)
    for x, y in zip(ddp["curves"], single["curves"]):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-4)
        assert x["val_top1"] == pytest.approx(y["val_top1"], abs=0.5)
