"""The README's user-defined task env registers from its own module and trains through the CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- user-env-example:start -->\s*```python\n(.*?)```\s*"
                      r"<!-- user-env-example:end -->", text, re.S)
    assert block, "README lost its user-env example"
    return block.group(1)


def test_readme_user_env_trains_through_the_cli(tmp_path):
    (tmp_path / "my_tasks.py").write_text(readme_example())
    metarl = [sys.executable, "-m", "metarl.cli"]
    listed = subprocess.run([*metarl, "envs", "--import", "my_tasks"], cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "my_tasks/Line1D-v0" in listed.stdout and "target ~ U[-1, 1]" in listed.stdout

    proc = subprocess.run(
        [*metarl, "train", str(ROOT / "experiments" / "navigation2d_quick.yaml"), "env.id=my_tasks:my_tasks/Line1D-v0",
         "run.iterations=2", "maml.meta_batch_size=4", "sampler.episodes_per_task=3", "policy.hidden_sizes=[8]",
         "eval.num_tasks=3", "eval.episodes_per_task=3", "eval.num_steps=1", f"run.output_dir={tmp_path}",
         "run.name=user", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "user"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and metrics[0]["env_steps"] == 2 * 4 * 3 * 20
    eval_result = json.loads((run_dir / "eval.json").read_text())
    assert eval_result["tasks"][0].keys() == {"target"}


def test_user_env_with_a_missing_method_fails_at_start(tmp_path):
    source = readme_example().replace("    def get_task(self):\n        return self._task\n", "")
    (tmp_path / "broken_tasks.py").write_text(source.replace("my_tasks/", "broken_tasks/"))
    proc = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "train", str(ROOT / "experiments" / "navigation2d.yaml"),
         "env.id=broken_tasks:broken_tasks/Line1D-v0", f"run.output_dir={tmp_path}", "run.name=broken"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "does not implement the task protocol: missing get_task" in proc.stderr
    assert not (tmp_path / "broken").exists()


def test_unknown_module_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "train", str(ROOT / "experiments" / "navigation2d.yaml"),
         "env.id=no_such_module:X-v0", f"run.output_dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "env.id: cannot import module 'no_such_module'" in proc.stderr
