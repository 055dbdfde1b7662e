"""A damaged checkpoint is found, named and passed over, never loaded (issue 14 item 2): every checkpoint records the
checksum of every file it holds; `--resume latest` verifies the newest and falls back to the newest intact one.
The damage is real: files of real checkpoints truncated, a byte flipped, a file deleted."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from meter.config import load_config
from meter.errors import DataError
from meter.models import checksums
from meter.models.checksums import CHECKSUMS, file_digest, record_checksums, verify_checksums
from meter.predictor import resolve_checkpoint
from meter.runs import run_pretrain
from meter.train.checkpoint import Checkpoints
from meter.train.metrics_log import read_metrics
from tests.faults import damage

STEPS = ["train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=5", "train.deterministic=true"]
DAMAGES = [("model.safetensors", "truncate"), ("model.safetensors", "flip"), ("training_state.pt", "flip"),
           ("progress.json", "delete"), ("tokenizer.json", "delete"), (CHECKSUMS, "truncate"),
           (CHECKSUMS, "delete")]  # fmt: skip


@pytest.fixture(scope="module")
def stopped_run(shapes_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped at step 4 of 6, with checkpoints at steps 2 and 4; read-only: copy it before damaging it."""
    from tests.conftest import MICRO

    out = tmp_path_factory.mktemp("stopped") / "run"
    cfg = load_config(None, [f"data.root={shapes_world}", *MICRO])
    run_pretrain(load_config(None, [f"train.out={out}", *STEPS, "train.stop_at=4"], base=cfg))
    return out


def test_every_checkpoint_records_the_checksum_of_every_file_it_holds(stopped_run):
    for checkpoint in Checkpoints(stopped_run / "checkpoints").all():
        parts = json.loads((checkpoint / CHECKSUMS).read_text())["parts"]
        recorded = {name: entry for part in parts.values() for name, entry in part.items()}
        files = {str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file() and p.name != CHECKSUMS}
        assert set(recorded) == files
        assert {"model.safetensors", "training_state.pt", "progress.json"} <= set(parts["training"]) | files
        assert "training_state.pt" in parts["training"] and "model.safetensors" in parts["model"]
        assert all(recorded[name]["sha256"] == file_digest(checkpoint / name) for name in files)


@pytest.mark.parametrize(("name", "how"), DAMAGES)
def test_resume_latest_passes_over_a_damaged_checkpoint_naming_the_file(stopped_run, tmp_path, caplog, name, how):
    run = shutil.copytree(stopped_run, tmp_path / "run")
    damage(run / "checkpoints/step_00000004" / name, how)
    with caplog.at_level(logging.WARNING):
        found = Checkpoints(run / "checkpoints").resolve("latest", set_aside=True)
    assert found == run / "checkpoints/step_00000002"
    warning = next(r.getMessage() for r in caplog.records if "is damaged" in r.getMessage())
    assert f"step_00000004/{name}" in warning and "trying the one before" in warning, warning
    assert (run / "checkpoints/damaged-step_00000004" / CHECKSUMS).exists() or how == "delete" or name == CHECKSUMS
    assert [p.name for p in Checkpoints(run / "checkpoints").all()] == ["step_00000002"]


def test_a_damaged_checkpoint_named_by_its_path_is_refused(stopped_run, tmp_path):
    run = shutil.copytree(stopped_run, tmp_path / "run")
    damage(run / "checkpoints/step_00000004/training_state.pt", "truncate")
    with pytest.raises(DataError, match=r"step_00000004/training_state.pt: damaged: .* bytes where .* were written"):
        Checkpoints(run / "checkpoints").resolve(str(run / "checkpoints/step_00000004"))


def test_no_intact_checkpoint_is_an_error_naming_the_folder(stopped_run, tmp_path):
    run = shutil.copytree(stopped_run, tmp_path / "run")
    for step in ("step_00000002", "step_00000004"):
        damage(run / "checkpoints" / step / "model.safetensors", "flip")
    named = (r"no intact checkpoint to resume from in .*run/checkpoints; damaged: step_00000004 "
             r"\(.*model.safetensors: damaged: .*\), set aside as damaged-step_00000004; step_00000002 .*set aside as "
             r"damaged-step_00000002")  # fmt: skip
    with pytest.raises(DataError, match=named):
        Checkpoints(run / "checkpoints").resolve("latest", set_aside=True)


def test_predicting_with_a_run_folder_uses_its_newest_intact_checkpoint(stopped_run, tmp_path):
    run = shutil.copytree(stopped_run, tmp_path / "run")
    damage(run / "checkpoints/step_00000004/model.safetensors", "flip")
    assert resolve_checkpoint(run) == run / "checkpoints/step_00000002"
    assert (run / "checkpoints/step_00000004").is_dir(), "predicting sets nothing aside"


@pytest.mark.slow
def test_resumed_past_a_damaged_checkpoint_the_run_ends_where_a_straight_run_ends(stopped_run, tmp_path, caplog):
    straight = run_pretrain(load_config(stopped_run / "config.yaml", [f"train.out={tmp_path / 'straight'}",
                                                                      "train.stop_at=0"]))  # fmt: skip
    run = shutil.copytree(stopped_run, tmp_path / "run")
    damage(run / "checkpoints/step_00000004/model.safetensors", "flip")
    with caplog.at_level(logging.INFO):
        resumed = run_pretrain(load_config(run / "config.yaml", [f"train.out={run}", "train.stop_at=0"]), "latest")
    assert any("resumed from" in r.getMessage() and "step_00000002 at step 2" in r.getMessage() for r in caplog.records)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_long_process_verifying_many_folders_keeps_a_bounded_record_and_still_finds_damage(tmp_path: Path):
    folders = []
    for index in range(checksums.VERIFIED_KEPT // 4 + 8):  # four files each: past the record's bound
        folder = tmp_path / f"folder_{index}"
        folder.mkdir()
        for name in ("a.bin", "b.bin", "c.bin", "d.bin"):
            (folder / name).write_bytes(bytes([index % 256]) * 64)
        record_checksums(folder, "model")
        assert verify_checksums(folder)
        folders.append(folder)
    assert len(checksums._VERIFIED) <= checksums.VERIFIED_KEPT
    first = folders[0] / "a.bin"  # the record forgot it: verified again from its bytes
    first.write_bytes(b"\xff" * 64)
    with pytest.raises(DataError, match="a.bin: damaged: its sha256 differs"):
        verify_checksums(folders[0])


def test_resumed_from_an_earlier_checkpoint_the_newer_ones_are_set_aside(stopped_run, tmp_path, caplog):
    """`--resume .../step_2` in a run that got to step 4: step_4 (the continuation given up) stayed, counted by
    keep_last and taken by a later `--resume latest` after a crash, which then went on from the abandoned
    continuation with this one's log."""
    run = shutil.copytree(stopped_run, tmp_path / "run")
    cfg = load_config(run / "config.yaml", [f"train.out={run}", "train.stop_at=3"])
    with caplog.at_level(logging.WARNING):
        run_pretrain(cfg, str(run / "checkpoints/step_00000002"))
    assert "step_00000004 is newer than step 2, where this run resumes" in caplog.text
    assert [p.name for p in Checkpoints(run / "checkpoints").all()] == ["step_00000002", "step_00000003"]
    assert (run / "checkpoints/abandoned-step_00000004" / CHECKSUMS).is_file(), "kept, renamed"
    assert Checkpoints(run / "checkpoints").resolve("latest").name == "step_00000003"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_a_step_saved_again_survives_a_kill_between_the_two_renames(stopped_run, tmp_path, caplog):
    """Saving a step again renames the earlier save away, then the new one in: killed in between, the earlier one
    is restored (it used to be deleted first, so that a kill there lost the step)."""
    run = shutil.copytree(stopped_run, tmp_path / "run")
    checkpoints = run / "checkpoints"
    (checkpoints / "step_00000004").rename(checkpoints / ".step_00000004.replaced")  # what the kill leaves
    shutil.copytree(checkpoints / "step_00000002", checkpoints / ".step_00000004.tmp")
    with caplog.at_level(logging.WARNING):
        found = Checkpoints(checkpoints).resolve("latest", set_aside=True)
    assert found == checkpoints / "step_00000004" and "checkpoint step_00000004 restored" in caplog.text
    resumed = run_pretrain(load_config(run / "config.yaml", [f"train.out={run}", "train.stop_at=5"]), "latest")
    assert resumed.name == "step_00000005" and not list(checkpoints.glob(".step_*")), "the leftovers are gone"
