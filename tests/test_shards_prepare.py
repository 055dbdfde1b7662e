import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meter.data.formats.conceptual_captions import ConceptualCaptionsSource
from meter.data.shard_writer import write_shards
from meter.errors import DataError
from tests.corpora import cc_file, write_conceptual_captions


def prepare(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meter", "prepare", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def shard_set(out: Path) -> dict[str, bytes]:
    names = ["manifest.json", "bad_samples.jsonl", *sorted(p.name for p in out.glob("*.tar"))]
    return {name: (out / name).read_bytes() for name in names}


def broken_cc(root: Path, rows: int) -> None:
    urls = write_conceptual_captions(root, rows)
    for row in range(7, rows, 50):
        (root / "training" / cc_file(urls[row])).write_bytes(b"\xff\xd8 not really a jpeg")


@pytest.mark.slow
def test_killed_preparation_resumes_to_the_same_shards_as_an_uninterrupted_one(tmp_path: Path):
    broken_cc(tmp_path / "cc", rows=1500)
    options = ["--root", str(tmp_path / "cc"), "--shard-size", "10", "--decode", "--no-progress", "--max-bad", "0.05"]
    straight = prepare("cc", *options, "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=120) == 0, straight.stderr.read()
    killed = prepare("cc", *options, "--out", str(tmp_path / "killed"))
    progress = tmp_path / "killed/progress"
    deadline = time.monotonic() + 60
    while len(list(progress.glob("*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    finished = len(list(progress.glob("*.json")))
    assert 3 <= finished < 150 and not (tmp_path / "killed/manifest.json").exists()
    resumed = prepare("cc", *options, "--out", str(tmp_path / "killed"))
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert shard_set(tmp_path / "killed") == shard_set(tmp_path / "straight")
    manifest = json.loads((tmp_path / "straight/manifest.json").read_text())
    assert (manifest["samples"], manifest["bad"], len(manifest["shards"])) == (1470, 30, 150)
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def test_preparation_refuses_to_resume_with_other_settings(tmp_path: Path):
    write_conceptual_captions(tmp_path / "cc", rows=6)
    write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    with pytest.raises(DataError, match="other settings .*shard_size"):
        write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=3, progress=False)


def test_prepare_command_over_its_budget_stops_with_a_message_naming_the_option_and_the_file(tmp_path: Path):
    broken_cc(tmp_path / "cc", rows=20)
    result = prepare("cc", "--root", str(tmp_path / "cc"), "--out", str(tmp_path / "out"), "--max-bad", "0.01")
    _, stderr = result.communicate(timeout=120)
    assert result.returncode == 2
    bad = tmp_path / "cc/training" / cc_file("http://example.com/photos/7/picture.jpg?size=large")
    assert f"meter: data: skipped 1 of 20 samples, more than the budget of 0 (1.0%, --max-bad): first: {bad}" in stderr
    assert "bad_samples.jsonl" in stderr
