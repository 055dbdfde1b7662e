"""The GPU benchmarks (benchmarks/), run on the CPU at their small preset as the GPU machine would start them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.runner import environment

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# what the borrowed GPU machine lacks of the project's dependencies
MISSING_ON_THE_GPU_MACHINE = ("webdataset", "pycocoevalcap", "submitit")


def without_packages(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """An environment in which `import NAME` fails as for a package that is not installed: a package of that name
    that raises ModuleNotFoundError, first on the path."""
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError('No module named {name!r}', name={name!r})\n"
        )
    env = environment()
    env["PYTHONPATH"] = f"{folder}:{env['PYTHONPATH']}"
    return env


def test_a_benchmark_cut_at_its_deadline_has_printed_each_row_it_measured(tmp_path: Path):
    """gpu_check.sh stops each part at its deadline. The table was printed only once every row was measured, so a
    part cut during its last row (the compiled one: the slowest) showed none of them. Stopped as the deadline
    stops it, right after its first row, with the GPU machine's packages only."""
    env = without_packages(tmp_path / "shims", MISSING_ON_THE_GPU_MACHINE)
    command = [sys.executable, str(BENCHMARKS / "inference.py"), "--steps", "1", "--warmup", "1", "--batch", "2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith(("BridgeTower (HF)", "meter")):
                break
    finally:
        process.terminate()  # as timeout(1) does at the deadline
        process.wait(timeout=30)
    said = "".join(lines)
    assert lines and lines[-1].startswith("BridgeTower (HF)"), said  # measured first, printed at once
    assert lines[-1].split()[-2:] == ["1.00x", "1.00x"], said
    assert process.returncode != 0, said  # cut, not ended


def test_a_count_the_benchmarks_cannot_run_is_a_usage_error_not_a_default_or_a_traceback():
    """`train_step.py --batch 1` ended in a ConfigError traceback (ITM needs 2); `--batch 0` or `--steps 0` ran the
    defaults instead, and `--warmup 0` could not mean no warm-up."""
    for script, option, value, message in (("train_step.py", "--batch", "1", "1 must be at least 2"),
                                           ("inference.py", "--batch", "0", "0 must be at least 1"),
                                           ("inference.py", "--steps", "0", "0 must be at least 1")):  # fmt: skip
        done = subprocess.run([sys.executable, str(BENCHMARKS / script), option, value], env=environment(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2 and f"argument {option}: {message}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
