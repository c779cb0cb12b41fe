"""Kill a running sweep with SIGKILL, run the same command again: it resumes, and the results stay whole."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from metablocks.sweep import Sweep, run_sweep
from helpers import tiny_sweep

SPEC = tiny_sweep("killme", (
    "data: {source: synthetic, img_size: 16, num_classes: 4, train_size: 384, val_size: 64}\n"
    "train: {epochs: 4, batch_size: 16, threads: 1}\n"
    "measure: {batch_size: 4, warmup: 0, iters: 1, speed: false}\n"
), mixers="pooling, identity, sepconv")


def _wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended early:\n{proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "timed out waiting for the sweep"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    runs = Sweep.load(spec).plan()
    second = out / "runs" / runs[1].run_id / "checkpoint.safetensors"
    command = [sys.executable, "-m", "metablocks", "sweep", "run", str(spec), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(second.is_file, 300, proc)  # the first run is finished, the second has checkpointed an epoch
        time.sleep(0.3)  # ... and is in the middle of another one
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])  # whole lines only; the second run was not finished
    first_line = lines[0]
    assert json.loads(first_line)["run_id"] == runs[0].run_id

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "already finished" in result.stderr
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if json.loads(line).get("kind") != "measure"]
    measured = [json.loads(line)["config"] for line in lines if json.loads(line).get("kind") == "measure"]
    assert measured == list(dict.fromkeys(r.config_key for r in runs))  # each configuration once, after training
    assert lines[0] == first_line  # the finished run was not redone
    assert sorted(r["run_id"] for r in records) == sorted(r.run_id for r in runs)  # none lost, none twice
    resumed = next(r for r in records if r["run_id"] == runs[1].run_id)
    assert resumed["status"] == "ok" and len(resumed["curves"]) == 4
    assert resumed["resumed_from"][0] >= 1  # restarted from its last checkpoint, not from scratch
    assert [c["epoch"] for c in resumed["curves"]] == [1, 2, 3, 4]

    # the resumed run ends with exactly the weights of a run that was never interrupted
    clean = tmp_path / "clean"
    run_sweep({**Sweep.load(spec).spec.model_dump(), "axes": [{"path": "stages[1].token_mixer", "values": ["identity"],
                                                                "name": "mixer"}]}, clean, progress=False)
    mine = load_file(str(out / "runs" / runs[1].run_id / "model.safetensors"))
    theirs = load_file(str(clean / "runs" / runs[1].run_id / "model.safetensors"))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (out / "results.jsonl").read_text().splitlines() == lines
