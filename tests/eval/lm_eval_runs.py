"""lm-eval runs on the project's local tasks (tests/eval/tasks, nothing downloaded): the CLI through
`python -m seedstream.client.harness` in a process of its own, or what that CLI calls (simple_evaluate, then
the tracker writes results and samples) in this process, with a task index built once; and what a run wrote.

The CLI builds lm-eval's index of its built-in tasks at every start (~20 s on CI's 2 cores): the in-process runs
let a test compare many runs while one CLI run still proves the command itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = "tests/eval/tasks"  # relative to ROOT, as the task YAMLs' data_files are
ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def read_output(folder: Path) -> tuple[dict, dict[str, list[dict]]]:
    """A run's results file and its logged samples per task, sorted by document and filter."""
    (results_file,) = folder.rglob("results_*.json")
    samples = {}
    for path in folder.rglob("samples_*.jsonl"):
        task = re.match(r"samples_(.+)_\d{4}-\d\d-\d\dT", path.name).group(1)
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda s: (s["doc_id"], s["filter"]))
    return json.loads(results_file.read_text()), samples


def run_cli(out: Path, model_args: str, tasks: str, *flags: str, timeout: float = 600) -> tuple[dict, dict]:
    """`python -m seedstream.client.harness --model seedstream` on the local tasks, writing under `out`."""
    harness = [sys.executable, "-m", "seedstream.client.harness", "--model", "seedstream"]
    run = ["--model_args", model_args, "--tasks", tasks, "--include_path", TASKS, *flags]
    cmd = [*harness, *run, "--log_samples", "--output_path", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"lm-eval failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return read_output(out)


def task_index():
    """lm-eval's index of the local tasks alone (the CLI's also holds its built-in ones)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(ROOT / TASKS), include_defaults=False)


def run_in_process(
    out: Path, model_args: str, tasks: list[str], index, batch_size: int = 1, model: str = "seedstream", **options
) -> tuple[dict, dict]:
    """What the CLI does with the same arguments (lm_eval/_cli/run.py), writing under `out` as it would.
    `options` are simple_evaluate's own (limit, apply_chat_template: the CLI's --limit, --apply_chat_template)."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    import seedstream.client.harness  # noqa: F401  (registers the model name)

    tracker = EvaluationTracker(output_path=str(out))
    old = Path.cwd()
    os.chdir(ROOT)  # the task YAMLs name their data files relative to the repository root
    try:
        results = lm_eval.simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=tasks,
            batch_size=batch_size,
            log_samples=True,
            evaluation_tracker=tracker,
            task_manager=index,
            **options,
        )
    finally:
        os.chdir(old)
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for name in results["configs"]:
        tracker.save_results_samples(task_name=name, samples=samples[name])
    return read_output(out)
