"""Streaming image folders: the same batches as the in-memory path, sharded like it, seeded per image."""
import numpy as np
import pytest
import torch
from helpers import Stop, interrupt_at

from metablocks.data import Batches, DataConfig, load_splits
from metablocks.data.pipeline import Pipeline
from metablocks.data.stream import (
    EpochShards,
    ImageFiles,
    PlainResize,
    list_image_folder,
    streamable,
)
from metablocks.train import TrainConfig, train

TINY = {"name": "tiny", "stem": {"type": "conv", "kernel_size": 3, "stride": 2, "padding": 1},
        "downsample": {"type": "conv"}, "block": {"norm": {"type": "groupnorm", "num_groups": 1}},
        "stages": [{"depth": 1, "dim": 8}, {"depth": 1, "dim": 16}]}
STATS = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir()
        for i in range(20):
            pixels = (rng.random((14, 18, 3)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i:02d}.jpg", quality=90)
    return root


def test_stream_is_chosen_for_image_folders_only(folder) -> None:
    assert streamable(DataConfig(source="imagefolder", path=str(folder)))
    assert not streamable(DataConfig(source="imagefolder", path=str(folder), loader="memory"))
    assert not streamable(DataConfig(source="digits"))
    with pytest.raises(ValueError, match="data source 'digits' is read into memory; loader: stream is for imagefolder"):
        streamable(DataConfig(source="digits", loader="stream"))


def test_file_lists_split_like_the_in_memory_source(folder) -> None:
    config = DataConfig(source="imagefolder", path=str(folder), img_size=12)
    files = list_image_folder(config)
    splits = load_splits(config)
    assert files.classes == splits.classes == ["c0", "c1", "c2"]
    assert files.train_labels.tolist() == splits.train_y.tolist() and files.val_labels.tolist() == splits.val_y.tolist()
    assert files.train_files.dtype.kind == "S"  # byte strings in one array: no per-file Python objects
    decoded = ImageFiles(files.train_files, files.train_labels, 3, PlainResize(12))
    assert torch.stack([decoded[i][0] for i in range(len(decoded))]).equal(splits.train_x)
    limited = list_image_folder(config.model_copy(update={"limit_train": 5, "limit_val": 2}))
    assert (limited.train_size, limited.val_size) == (5, 2)


def test_epoch_shards_follow_batches_and_split_over_ranks() -> None:
    images, labels = torch.zeros(22, 1, 1, 1, dtype=torch.uint8), torch.arange(22)
    batches = Batches(images, labels, 8, shuffle=True, drop_last=True, seed=3)
    single = EpochShards(22, batch_size=8, seed=3)
    single.set_epoch(2)
    order = [index for _, index in single]
    assert order == torch.cat([y for _, y in batches.epoch(2)]).tolist()  # the in-memory path's order
    ranks = [EpochShards(22, batch_size=4, rank=r, world=2, seed=3) for r in range(2)]
    for shard in ranks:
        shard.set_epoch(2)
    items = [list(shard) for shard in ranks]
    assert len(ranks[0]) == len(items[0]) == 8
    for step in range(2):  # each global batch of 8 is the union of the ranks' batches of 4
        union = sorted(i for rank in items for _, i in rank[step * 4:(step + 1) * 4])
        assert union == sorted(order[step * 8:(step + 1) * 8])
    seeds = dict((i, s) for rank in items for s, i in rank)
    assert all(seeds[i] == s for s, i in single)  # an image draws the same seed on any rank
    single.set_epoch(3)
    assert [i for _, i in single] != order
    with pytest.raises(ValueError, match="5 images are fewer than one global batch of 8"):
        EpochShards(5, batch_size=4, world=2)


def test_streaming_trains_exactly_like_the_in_memory_path(folder) -> None:
    config = TrainConfig(epochs=2, batch_size=8, threads=1, track=())
    base = {"source": "imagefolder", "path": str(folder), "img_size": 12, **STATS}
    memory = train(TINY, data=DataConfig(**base, loader="memory"), config=config)
    stream = train(TINY, data=DataConfig(**base, workers=2), config=config)
    assert stream["data_loader"] == "stream (2 workers)" and "data_loader" not in memory
    assert [c["train_loss"] for c in stream["curves"]] == [c["train_loss"] for c in memory["curves"]]
    assert [c["val_top1"] for c in stream["curves"]] == [c["val_top1"] for c in memory["curves"]]
    a, b = memory["_model"].state_dict(), stream["_model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_timm_transform_draws_the_same_with_any_number_of_workers(folder) -> None:
    config = TrainConfig(epochs=2, batch_size=8, threads=1, track=(),
                         transform={"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.5, "re_mode": "pixel"})
    base = {"source": "imagefolder", "path": str(folder), "img_size": 12, **STATS}
    runs = [train(TINY, data=DataConfig(**base, workers=w, persistent_workers=w == 2), config=config) for w in (0, 2)]
    assert [c["train_loss"] for c in runs[0]["curves"]] == [c["train_loss"] for c in runs[1]["curves"]]
    plain = train(TINY, data=DataConfig(**base, workers=0), config=config.model_copy(update={"transform": None}))
    assert plain["curves"][0]["train_loss"] != runs[0]["curves"][0]["train_loss"]  # the transform is applied


def test_pipeline_normalizes_streamed_batches_with_the_given_statistics(folder) -> None:
    data = DataConfig(source="imagefolder", path=str(folder), img_size=12, workers=0, **STATS)
    pipeline = Pipeline(data, transform=None, batch_size=8, eval_batch_size=16, seed=0, device=torch.device("cpu"))
    x, y = next(pipeline.val())
    files = list_image_folder(data)
    raw = ImageFiles(files.val_files, files.val_labels, 3, PlainResize(12))[0][0]
    assert torch.allclose(x[0], (raw.float() / 255 - 0.5) / 0.25)
    assert (pipeline.info.train_size, pipeline.info.val_size) == (48, 12)  # 20% of each class of 20 held out
    assert pipeline.steps_per_epoch == 6 and pipeline.info.num_classes == 3
    imagenet = Pipeline(data.model_copy(update={"mean": None, "std": None}), transform=None, batch_size=8,
                        eval_batch_size=16, seed=0, device=torch.device("cpu"))
    assert imagenet.mean == (0.485, 0.456, 0.406) and imagenet.std == (0.229, 0.224, 0.225)


def test_sweep_run_streams_an_image_folder_given_on_the_command_line(folder, tmp_path, capsys) -> None:
    import json
    import textwrap

    from metablocks.cli import main

    spec = tmp_path / "sweep.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: on_folder
        base: {json.dumps(TINY)}
        axes:
          - {{path: "stages[1].token_mixer", values: [pooling, identity], name: mixer}}
        data: {{source: synthetic, img_size: 12, workers: 1, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
        train: {{epochs: 1, batch_size: 8, threads: 1, track: []}}
        measure: {{batch_size: 2, warmup: 0, iters: 1, speed: false}}
        """))
    out = tmp_path / "out"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--data", "imagefolder", "--data-path", str(folder),
                 "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    records = [r for r in records if r.get("kind", "run") == "run"]  # measurement records follow the runs
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all(r["data_loader"] == "stream (1 workers)" and r["train_size"] == 48 and r["num_classes"] == 3
               for r in records)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["spec"]["data"]["source"] == "imagefolder" and plan["spec"]["data"]["path"] == str(folder)


def test_a_streamed_run_with_timm_transforms_resumes_exactly(folder, tmp_path) -> None:
    config = TrainConfig(epochs=3, batch_size=8, threads=1, track=(), warmup_epochs=0, drop_path=0.1,
                         transform={"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.5})
    data = DataConfig(source="imagefolder", path=str(folder), img_size=12, workers=2, **STATS)
    straight = train(TINY, data=data, config=config)

    Interrupt = interrupt_at(8)  # in the second epoch (6 steps per epoch), persistent workers running

    with pytest.raises(Stop):
        train(TINY, data=data, config=config, out_dir=tmp_path, make_progress=Interrupt)
    resumed = train(TINY, data=data, config=config, out_dir=tmp_path)
    assert resumed["resumed_from"] == [1]
    assert [c["train_loss"] for c in resumed["curves"]] == [c["train_loss"] for c in straight["curves"]]
    a, b = straight["_model"].state_dict(), resumed["_model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
