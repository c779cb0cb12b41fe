"""The Ray executor on a real local Ray cluster (started on 127.0.0.1 by the test, stopped after)."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_sweep

pytest.importorskip("ray")

SPEC = tiny_sweep("on_ray", (
    "seeds: [0, 1]\n"
    "data: {source: synthetic, img_size: 16, num_classes: 4, train_size: 64, val_size: 32}\n"
    "train: {epochs: 1, batch_size: 16, threads: 1}\n"
    "measure: {batch_size: 4, warmup: 0, iters: 1}\n"
))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_four_runs_as_ray_tasks_on_a_local_cluster(tmp_path) -> None:
    ray_cli = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    start = subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        spec = tmp_path / "sweep.yaml"
        spec.write_text(SPEC)
        out = tmp_path / "out"
        result = subprocess.run([sys.executable, "-m", "metablocks", "sweep", "run", str(spec), "--out", str(out),
                                 "--executor", "ray", "--address", f"127.0.0.1:{port}", "--no-progress"],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"submitted 4 runs to Ray at 127.0.0.1:{port}" in result.stderr
        lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        records = [r for r in lines if r.get("kind") != "measure"]
        assert len(records) == 4 and all(r["status"] == "ok" for r in records)
        measured = [r for r in lines if r.get("kind") == "measure"]  # by the driver, after the Ray tasks
        assert lines[4:] == measured and [m["executor"] for m in measured] == ["ray", "ray"]
        assert sorted((r["labels"]["mixer"], r["seed"]) for r in records) == [
            ("identity", 0), ("identity", 1), ("pooling", 0), ("pooling", 1)]
        assert all("ray_pid" in r for r in records)  # each came back from a Ray task
        assert all((out / "runs" / r["run_id"] / "model.safetensors").is_file() for r in records)
        assert "| identity |" in (out / "results.md").read_text()
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)


RESUME_SPEC = SPEC.replace("name: on_ray", "name: ray_resume").replace(
    "values: [pooling, identity]", "values: [pooling, identity, sepconv]").replace(
    "seeds: [0, 1]", "seeds: [0]").replace("train_size: 64", "train_size: 384").replace("epochs: 1", "epochs: 4")


@pytest.mark.slow
def test_ray_sweep_resumes_after_its_driver_is_sigkilled(tmp_path) -> None:
    import os
    import signal
    import time

    ray_cli = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    start = subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        spec = tmp_path / "sweep.yaml"
        spec.write_text(RESUME_SPEC)
        out = tmp_path / "out"
        command = [sys.executable, "-m", "metablocks", "sweep", "run", str(spec), "--out", str(out), "--executor",
                   "ray", "--address", f"127.0.0.1:{port}", "--cpus-per-run", "1", "--no-progress"]
        driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        results = out / "results.jsonl"

        def unfinished_checkpoint() -> bool:  # a run that has written an epoch but has no record yet
            finished = {json.loads(line)["run_id"] for line in results.read_text().splitlines()} \
                if results.is_file() else set()
            return any((d / "checkpoint.safetensors").is_file() and d.name not in finished
                       for d in (out / "runs").glob("*")) if (out / "runs").is_dir() else False

        deadline = time.monotonic() + 400
        while not unfinished_checkpoint():
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "timed out waiting for a checkpoint"
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, mid-sweep: its Ray tasks die with its job
        driver.wait()
        assert driver.returncode == -signal.SIGKILL
        before = results.read_text().splitlines() if results.is_file() else []
        assert len(before) < 3 and all(json.loads(line) for line in before)  # whole lines only

        again = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        lines = results.read_text().splitlines()
        assert lines[:len(before)] == before  # finished runs kept, not redone
        records = [json.loads(line) for line in lines]
        assert sorted(r["labels"]["mixer"] for r in records) == ["identity", "pooling", "sepconv"]  # none twice
        assert all(r["status"] == "ok" and len(r["curves"]) == 4 and "ray_pid" in r for r in records)
        resumed = [r for r in records[len(before):] if r["resumed_from"]]
        assert resumed and all(r["resumed_from"][0] >= 1 for r in resumed)  # from a checkpoint, not from scratch
        assert all([c["epoch"] for c in r["curves"]] == [1, 2, 3, 4] for r in records)
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
