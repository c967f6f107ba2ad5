"""`metarl render`: mp4s before and after adaptation, and a clear refusal where frames cannot be made."""

import os
from pathlib import Path

from conftest import skip_unless_ci
from metarl.cli import main
from metarl.render import rendering_unavailable

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = ["run.iterations=1", "maml.meta_batch_size=2", "sampler.episodes_per_task=2", "sampler.horizon=10",
        "policy.hidden_sizes=[8]", "trpo.cg_iters=2", "eval.num_tasks=2", "eval.episodes_per_task=2",
        "eval.num_steps=1"]


def test_render_writes_videos_before_and_after_adaptation(tmp_path, monkeypatch):
    if "MUJOCO_GL" not in os.environ:
        monkeypatch.setenv("MUJOCO_GL", "egl")
    reason = rendering_unavailable("metarl/HalfCheetahVel-v0")
    if reason:
        skip_unless_ci(f"no offscreen rendering here: {reason}")
    config = str(EXPERIMENTS / "halfcheetah_vel.yaml")
    assert main(["train", config, *TINY, f"run.output_dir={tmp_path}", "run.name=hc", "--quiet"]) == 0
    assert main(["render", str(tmp_path / "hc"), "--tasks", "1", "--frames", "6", "--out-dir",
                 str(tmp_path / "v")]) == 0
    videos = sorted(p.name for p in (tmp_path / "v").iterdir())
    assert videos == ["task0_after1.mp4", "task0_before.mp4"]
    import imageio

    for name in videos:
        reader = imageio.get_reader(tmp_path / "v" / name)
        frames = [frame for frame in reader]
        reader.close()
        assert len(frames) == 6 and frames[0].shape == (240, 320, 3)


def test_render_refuses_an_env_without_frames(tmp_path, capsys):
    config = str(EXPERIMENTS / "navigation2d.yaml")
    assert main(["train", config, *TINY, f"run.output_dir={tmp_path}", "run.name=nav", "--quiet"]) == 0
    assert main(["render", str(tmp_path / "nav")]) == 1
    assert "has no rgb_array render mode" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "nothing")]) == 2
