"""wandb tracking: an offline run written beside the run directory and read back from its log."""

import json
import os
import struct
import time
from pathlib import Path

from conftest import skip_unless_ci
from metarl.cli import main
from metarl.tracking import namespaced

NAV = str(Path(__file__).resolve().parents[1] / "experiments" / "navigation2d.yaml")


def read_wandb_log(path: Path) -> list:
    """The records of an offline run's ``run-*.wandb`` file (LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos = path.read_bytes(), 32768, 7  # 7-byte ":W&B" header
    records, pending = [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wait_for_exit_record(path: Path, timeout: float = 60.0) -> list:
    """The records of an offline run once wandb's service has flushed them: ``run.finish()`` returns
    before the service process has written the file (seen: 7 bytes at return, complete a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_log(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_offline_wandb_run_holds_config_history_eval_plot_and_checkpoints(tmp_path, tiny_run_args, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = [*tiny_run_args, "run.name=tracked", "tracking.wandb=true", "tracking.mode=offline",
            "tracking.tags=[smoke]", "tracking.group=tests", "eval.train_tasks=2"]
    assert main(["train", NAV, *args, "--quiet"]) == 0
    run_dir = tmp_path / "tracked"
    assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "eval.json").is_file()  # local files regardless
    logs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    records = wait_for_exit_record(logs[0])
    kinds = [r.WhichOneof("record_type") for r in records]
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "tracked" and list(run.tags) == ["smoke"] and run.run_group == "tests"
    updates = [item for item in run.config.update]
    updates += [item for r in records if r.WhichOneof("record_type") == "config" for item in r.config.update]
    config = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}
    config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
    assert config["maml"]["meta_batch_size"] == 3 and "versions" in config and "git_commit" in config
    history_keys = {item.key or "/".join(item.nested_key)
                    for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert {"meta/iteration", "meta/post_return", "meta/kl", "time/update", "time/sampling"} <= history_keys
    assert any(key.startswith("eval/adaptation") for key in history_keys)
    assert any(key.startswith("eval/plot") for key in history_keys)
    assert any(key.startswith("eval_train/plot") for key in history_keys)  # meta-train tasks apart
    artifacts = [r.artifact for r in records
                 if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
    assert [a.name for a in artifacts] == ["tracked-checkpoints"]
    assert "exit" in kinds


def test_online_mode_without_an_account_fails_fast(tmp_path, tiny_run_args, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    args = [*tiny_run_args, "run.name=online", "tracking.wandb=true", "tracking.mode=online"]
    assert main(["train", NAV, *args, "--quiet"]) == 2
    assert "tracking.mode: online needs a wandb account" in capsys.readouterr().err


def test_namespaced_keys():
    metrics = {"iteration": 3, "pre_return": -40.0, "post_return": -12.0, "kl": 0.01, "line_search_step": None,
               "adapt_returns": [-8.0], "time_update": 2.0, "wall_time": 10.0}
    out = namespaced(metrics)
    assert out["meta/iteration"] == 3 and out["meta/post_return"] == -12.0
    assert out["meta/line_search_step"] == -1  # reverted step
    assert out["adapt/return_after_2_steps"] == -8.0
    assert out["time/update"] == 2.0 and out["time/wall_time"] == 10.0


def test_offline_run_logs_videos_for_a_mujoco_family(tmp_path, monkeypatch):
    from metarl.render import rendering_unavailable

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    if "MUJOCO_GL" not in os.environ:
        monkeypatch.setenv("MUJOCO_GL", "egl")
    reason = rendering_unavailable("metarl/HalfCheetahVel-v0")
    if reason:
        skip_unless_ci(f"no offscreen rendering here: {reason}")
    config = str(Path(__file__).resolve().parents[1] / "experiments" / "halfcheetah_vel.yaml")
    args = ["run.iterations=1", "maml.meta_batch_size=2", "sampler.episodes_per_task=2", "sampler.horizon=8",
            "policy.hidden_sizes=[8]", "trpo.cg_iters=2", "eval.num_tasks=2", "eval.episodes_per_task=2",
            "eval.num_steps=1", f"run.output_dir={tmp_path}", "run.name=hc", "tracking.wandb=true", "tracking.videos=1"]
    assert main(["train", config, *args, "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "hc" / "videos").iterdir()) == ["task0_after1.mp4", "task0_before.mp4"]
    (log,) = (tmp_path / "hc" / "wandb").glob("offline-run-*/run-*.wandb")
    keys = {item.key or "/".join(item.nested_key)
            for r in wait_for_exit_record(log) if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert (any(k.startswith("eval/video/task0_before") for k in keys)
            and any(k.startswith("eval/video/task0_after1") for k in keys))
