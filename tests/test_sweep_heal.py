"""A sweep directory that heals: every kind of damage is reported with its place and repaired, results unchanged."""
import fcntl
import io
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from metablocks.cli import main
from metablocks.sweep import ResultStore, Sweep, SweepError, run_sweep
from metablocks.sweep.results import REJECTED, SweepDirError
from metablocks.sweep.driver import report
from metablocks.train.checkpoint import CorruptFile, load_model_weights, load_weights, save_tensors
from helpers import tiny_sweep

SPEC = tiny_sweep("heal", (
    "data: {source: synthetic, img_size: 16, num_classes: 4, train_size: 32, val_size: 16}\n"
    "train: {epochs: 2, batch_size: 16, threads: 1}\n"
    "measure: {batch_size: 2, warmup: 0, iters: 1, rounds: 2}\n"
))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-run sweep (2 epochs each, so each run has a checkpoint and the one before it)."""
    root = tmp_path_factory.mktemp("heal")
    spec = root / "sweep.yaml"
    spec.write_text(SPEC)
    out = root / "out"
    run_sweep(spec, out, progress=False, stream=io.StringIO())
    return spec, out


@pytest.fixture
def sweep(finished, tmp_path):
    """A copy of the finished sweep to damage: (spec, directory, runs, the original lines of results.jsonl)."""
    spec, out = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return spec, copy, Sweep.load(spec).plan(), (copy / "results.jsonl").read_text().splitlines()


def _again(spec, out) -> tuple[list[dict], str]:
    stream = io.StringIO()
    records = run_sweep(spec, out, progress=False, stream=stream)
    return records, stream.getvalue()


def _run_lines(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()) if r.get("kind") != "measure"]


def _same_results(old: dict, new: dict) -> bool:
    """The same numbers (all but the timings, which an epoch trained again does not repeat)."""
    untimed = [{k: v for k, v in c.items() if k != "epoch_time"} for c in old["curves"]]
    return untimed == [{k: v for k, v in c.items() if k != "epoch_time"} for c in new["curves"]] and all(
        old[k] == new[k] for k in ("top1", "best_top1", "val_loss", "params", "macs", "run_id", "status"))


def _weights(out, run) -> dict:
    """The saved model's tensors, copied (load_file maps the file: damage to it would show through)."""
    return {k: v.clone() for k, v in load_file(str(out / "runs" / run.run_id / "model.safetensors")).items()}


def _write_lines(out, lines: list[str], tail: bytes = b"\n") -> None:
    (out / "results.jsonl").write_bytes("\n".join(lines).encode() + tail)


def _index(lines: list[str], run) -> int:
    return next(i for i, line in enumerate(lines) if json.loads(line).get("run_id") == run.run_id)


def test_torn_last_line_is_reported_set_aside_and_its_run_rerun(sweep) -> None:
    spec, out, runs, lines = sweep
    i = _index(lines, runs[1])
    original = json.loads(lines[i])
    kept = lines[:i] + lines[i + 1:]
    torn = lines[i][: len(lines[i]) // 2]
    _write_lines(out, [*kept, torn], tail=b"")  # the write was cut off: half a line, no newline
    records, err = _again(spec, out)
    n = len(kept) + 1
    assert f"note: {out / 'results.jsonl'}:{n}: torn line (cut off: " in err
    assert f"skipped (moved to {REJECTED}); a run without a valid record runs again" in err
    assert (out / REJECTED).read_text() == torn + "\n"  # kept for inspection, not lost
    redone = {r["run_id"]: r for r in records}[runs[1].run_id]
    assert redone["resumed_from"] == [2] and _same_results(original, redone)  # from its final checkpoint
    assert [r["run_id"] for r in _run_lines(out)] == [runs[0].run_id, runs[1].run_id]  # none lost, none twice


def test_nul_bytes_line(sweep) -> None:
    spec, out, runs, lines = sweep
    i = _index(lines, runs[0])
    original = json.loads(lines[i])
    raw = "\n".join(lines).encode() + b"\n"
    start = raw.index(lines[i].encode())
    (out / "results.jsonl").write_bytes(raw[:start] + b"\0" * len(lines[i]) + raw[start + len(lines[i]):])
    records, err = _again(spec, out)
    assert f"{out / 'results.jsonl'}:{i + 1}: NUL bytes in the line: skipped" in err
    assert _same_results(original, {r["run_id"]: r for r in records}[runs[0].run_id])
    assert sorted(r["run_id"] for r in _run_lines(out)) == sorted(r.run_id for r in runs)


def test_empty_object_line_is_skipped_and_nothing_reruns(sweep) -> None:
    spec, out, runs, lines = sweep
    _write_lines(out, [lines[0], "{}", *lines[1:]])
    records, err = _again(spec, out)
    assert (f"{out / 'results.jsonl'}:2: the record lacks run_id, status, config, labels, seed: skipped" in err)
    assert "2 of 2 runs already finished" in err
    assert (out / "results.jsonl").read_text().splitlines() == lines  # healed back to exactly the old file


def test_record_missing_keys_reruns_its_run(sweep) -> None:
    spec, out, runs, lines = sweep
    i = _index(lines, runs[1])
    original = json.loads(lines[i])
    broken = {k: v for k, v in original.items() if k != "status"}
    _write_lines(out, [*lines[:i], json.dumps(broken), *lines[i + 1:]])
    records, err = _again(spec, out)
    assert f"{out / 'results.jsonl'}:{i + 1}: the record lacks status: skipped" in err
    assert "1 of 2 runs already finished" in err
    assert _same_results(original, {r["run_id"]: r for r in records}[runs[1].run_id])


def test_store_reports_bad_lines_with_their_place(tmp_path) -> None:
    store = ResultStore(tmp_path)
    good = {"run_id": "a", "status": "ok", "config": "base", "labels": {}, "seed": 0, "top1": 50.0}
    store.path.write_text("\n".join([json.dumps(good), "[1, 2]", json.dumps({**good, "status": "maybe"}),
                                     json.dumps({**good, "seed": "0"}), json.dumps({**good, "top1": None}),
                                     json.dumps({"kind": "other"})]) + "\n")
    records, bad = store.read()
    assert records == [good]
    assert [str(b) for b in bad] == [
        f"{store.path}:2: a record is a JSON object, this line holds a list",
        f"{store.path}:3: status 'maybe' is not ok or failed",
        f"{store.path}:4: wrong types: seed (str, not int)",
        f"{store.path}:5: an ok record needs a number top1, given None",
        f"{store.path}:6: unknown record kind 'other'; kinds: run, measure"]
    store.path.write_bytes(store.path.read_bytes() + b'{"run_id": "b"')  # torn: appending must not glue to it
    store.append({**good, "run_id": "c"})
    assert [r["run_id"] for r in store.records()] == ["a", "c"]


def _unfinished(out, lines, run) -> list[str]:
    """Drop the run's record: as if the sweep was killed while the run trained."""
    kept = [line for line in lines if json.loads(line).get("run_id") != run.run_id]
    _write_lines(out, kept)
    return kept


def test_truncated_checkpoint_resumes_from_the_one_before(sweep) -> None:
    spec, out, runs, lines = sweep
    original = json.loads(lines[_index(lines, runs[1])])
    weights = _weights(out, runs[1])
    _unfinished(out, lines, runs[1])
    checkpoint = out / "runs" / runs[1].run_id / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    records, err = _again(spec, out)
    redone = {r["run_id"]: r for r in records}[runs[1].run_id]
    assert redone["status"] == "ok" and redone["resumed_from"] == [1]  # the checkpoint before: epoch 1
    assert redone["checkpoint_notes"][0].startswith(f"{checkpoint} is not a readable safetensors file (")
    assert redone["checkpoint_notes"][0].endswith("): discarded")
    assert redone["checkpoint_notes"][1] == "resuming from checkpoint.prev.safetensors (epoch 1)"
    assert _same_results(original, redone)
    new = _weights(out, runs[1])
    assert all(torch.equal(weights[k], new[k]) for k in weights)  # bit-identical to the uninterrupted run


def test_flipped_bytes_in_both_checkpoints_train_from_scratch(sweep) -> None:
    spec, out, runs, lines = sweep
    original = json.loads(lines[_index(lines, runs[0])])
    _unfinished(out, lines, runs[0])
    run_dir = out / "runs" / runs[0].run_id
    for name in ("checkpoint.safetensors", "checkpoint.prev.safetensors"):
        _flip(run_dir / name)
    with pytest.raises(CorruptFile, match="does not match its sha256 checksum"):
        load_weights(run_dir / "checkpoint.safetensors")
    records, _ = _again(spec, out)
    redone = {r["run_id"]: r for r in records}[runs[0].run_id]
    assert redone["resumed_from"] == [] and redone["checkpoint_notes"][-1] == (
        "no good checkpoint left: training from scratch")
    assert len(redone["checkpoint_notes"]) == 3 and _same_results(original, redone)


def _flip(path) -> None:
    """Flip one byte in the middle of the tensor data (after the header)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + (len(data) - start) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_saved_model_rerun_the_run(sweep) -> None:
    spec, out, runs, lines = sweep
    model = out / "runs" / runs[1].run_id / "model.safetensors"
    weights = _weights(out, runs[1])
    _flip(model)
    with pytest.raises(CorruptFile, match=f"{model} does not match its sha256 checksum"):
        load_model_weights(model)
    records, err = _again(spec, out)
    assert f"note: {model} does not match its sha256 checksum (flipped bytes or a damaged header): the run is " \
           f"run again" in err
    assert all(torch.equal(weights[k], v) for k, v in load_model_weights(model).items())  # verified, and as before
    assert [r["run_id"] for r in _run_lines(out)] == [runs[0].run_id, runs[1].run_id, runs[1].run_id]
    assert _same_results(json.loads(lines[_index(lines, runs[1])]), records[1])


def test_file_without_checksum_is_corrupt(tmp_path) -> None:
    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CorruptFile, match="has no sha256 checksum"):
        load_model_weights(tmp_path / "plain.safetensors")
    save_tensors(tmp_path / "sum.safetensors", {"w": torch.ones(2, dtype=torch.bfloat16)}, {"note": "x"})
    assert torch.equal(load_model_weights(tmp_path / "sum.safetensors")["w"], torch.ones(2, dtype=torch.bfloat16))


def test_leftover_temp_files_are_removed(sweep) -> None:
    spec, out, runs, lines = sweep
    busy = out / "runs" / runs[0].run_id
    stale = [out / ".results.jsonl.4242.tmp", out / "runs" / runs[1].run_id / ".checkpoint.safetensors.77.tmp",
             out / "runs" / runs[1].run_id / ".record.99.json"]
    for path in stale:
        path.write_bytes(b"half a write")
    (busy / ".model.safetensors.5.tmp").write_bytes(b"being written")
    fd = os.open(busy / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a worker still writes in this run's directory: leave it alone
    try:
        _, err = _again(spec, out)
    finally:
        os.close(fd)
    assert not any(path.exists() for path in stale)
    assert "note: removed 3 temporary file(s) of interrupted writes: .results.jsonl.4242.tmp, " in err
    assert (busy / ".model.safetensors.5.tmp").exists()
    assert (out / "results.jsonl").read_text().splitlines() == lines


@pytest.mark.parametrize("damage, message", [
    ("missing", "{d} does not exist: no sweep there"),
    ("file", "{d} is a file, not a sweep directory"),
    ("no_plan", "{d} is not a sweep directory (no plan.json; `metablocks sweep run SPEC --out {d}` makes one)"),
    ("bad_plan", "{d}/plan.json is damaged (Expecting ':' delimiter: line 1 column 9 (char 8)); "
                 "`metablocks sweep run SPEC --out {d}` rewrites it"),
    ("plan_fields", "{d}/plan.json is damaged (it lacks name, columns or runs with run ids); "
                    "`metablocks sweep run SPEC --out {d}` rewrites it"),
    ("results_dir", "cannot read {d}/results.jsonl: Is a directory"),
])
def test_report_on_a_missing_or_broken_directory_is_one_line(sweep, tmp_path, capsys, damage, message) -> None:
    spec, out, runs, lines = sweep
    target = out
    if damage == "missing":
        target = tmp_path / "nowhere"
    elif damage == "file":
        target = tmp_path / "a_file"
        target.write_text("x")
    elif damage == "no_plan":
        (out / "plan.json").unlink()
    elif damage == "bad_plan":
        (out / "plan.json").write_text('{"name" 3}')
    elif damage == "plan_fields":
        (out / "plan.json").write_text('{"name": "x", "runs": [{}]}')
    else:
        (out / "results.jsonl").unlink()
        (out / "results.jsonl").mkdir()
    assert main(["sweep", "report", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message.format(d=target)}\n" and captured.out == ""
    with pytest.raises(SweepDirError):
        report(target)


def test_report_skips_bad_lines_with_a_note(sweep, capsys) -> None:
    spec, out, runs, lines = sweep
    _write_lines(out, [*lines, "not json"])
    assert main(["sweep", "report", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"note: {out / 'results.jsonl'}:{len(lines) + 1}: not valid JSON (Expecting value at column 1): " \
           f"skipped" in captured.err
    assert captured.out.startswith("2 of 2 runs finished")
    assert (out / "results.jsonl").read_text().splitlines() == [*lines, "not json"]  # report only reads


BASE = SPEC.split("axes:")[0]


@pytest.mark.parametrize("body, error", [
    ("axes:\n  - {path: train.epochs, values: [2, 0]}\n",
     ":11: axes[0].values[1]: train.epochs: Input should be greater than or equal to 1 (given: 0)"),
    ("axes:\n  - {path: train.epoch, values: [1]}\n",
     ":11: axes[0].values[0]: train.epoch: unknown field 'epoch' (did you mean 'epochs'?); allowed: "),
    ("axes:\n  - {path: data.augment.hflip, values: [maybe]}\n",
     ":11: axes[0].values[0]: data.augment.hflip: Input should be a valid boolean"),
    ("axes:\n  - {path: train.epochs.x, values: [1]}\n",
     ":11: axes[0].values[0]: train.epochs.x: epochs is a value (10), not a section with fields"),
    ("axes:\n  - {path: 'stages[0].dim', values: [8, 16], labels: [a]}\n",
     ":11: axes[0].labels: labels gives 1 labels for 2 values"),
    ("seeds: [1, 1]\n", ":10: seeds: seeds must be a non-empty list of distinct seeds, given [1, 1]"),
    ("train: {epochs: x, threads: 0}\n", ":10: train.epochs: Input should be a valid integer"),
    ("measure: {rounds: 0}\n", ":10: measure.rounds: Input should be greater than or equal to 1 (given: 0)"),
])
def test_spec_and_train_config_errors_are_located(tmp_path, body, error) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(BASE + body)
    with pytest.raises(SweepError) as err:
        Sweep.load(path).plan()
    assert f"{path}{error}" in str(err.value)


def test_spec_errors_all_at_once_and_undecodable_file(tmp_path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(BASE + "axes:\n  - {path: train.lr, values: [-1, abc]}\n  - {path: data.img_size, values: [2]}\n")
    with pytest.raises(SweepError) as err:
        Sweep.load(path).plan()
    assert str(err.value).splitlines() == [
        "invalid sweep: 3 problems:",
        f"  {path}:11: axes[0].values[0]: train.lr: Input should be greater than 0 (given: -1)",
        f"  {path}:12: axes[1].values[0]: data.img_size: Input should be greater than or equal to 4 (given: 2)",
        f"  {path}:11: axes[0].values[1]: train.lr: Input should be a valid number, unable to parse string as a "
        f"number (given: 'abc')"]
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SweepError, match=r"sweep.yaml:1: the file is not UTF-8 text \(byte 0xff at offset 0\)"):
        Sweep.load(path)
