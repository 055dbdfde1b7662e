"""Real torchrun launches (2 processes, gloo, CPU) against one process with the same global batch."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from meter.config import Config, load_config
from meter.runs import run_pretrain
from meter.train.checkpoint import Checkpoints
from meter.train.metrics_log import read_metrics
from tests.conftest import MICRO
from tests.faults import run_meter_with_faults, torchrun_with_faults
from tests.runner import EXACT, TWO_LAYERS, pretrain_args, run_meter

COMMON = [*EXACT, "train.max_steps=6", "train.checkpoint_every=3", "objectives.mim=1",
          "objectives.itm_group_size=4"]  # fmt: skip
CURVES = ["train/mlm_loss", "train/itm_loss", "train/mim_loss", "train/grad_norm", "train/lr"]


@pytest.fixture(scope="module")
def one_process(shapes_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, a batch of 16."""
    from tests.conftest import MICRO

    out = tmp_path_factory.mktemp("one") / "run"
    cfg: Config = load_config(None, [f"data.root={shapes_world}", f"train.out={out}", *MICRO, *COMMON,
                                     "train.batch_size=16"])  # fmt: skip
    run_pretrain(cfg)
    return out


def _assert_same_curve(reference: Path, run: Path, steps: range) -> None:
    expected = {r["step"]: r for r in read_metrics(reference / "metrics.jsonl")}
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(steps), "one record per step: only rank 0 logs"
    for key in CURVES:
        assert [r[key] for r in records] == pytest.approx([expected[s][key] for s in steps], rel=1e-4, abs=1e-6), key


def _assert_same_weights(reference: Path, run: Path) -> None:
    a = load_file(reference / "checkpoints/step_00000006/model.safetensors")
    b = load_file(run / "checkpoints/step_00000006/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_two_ddp_processes_accumulating_make_the_loss_curve_of_one_process(one_process, shapes_world, tmp_path):
    """2 processes x batch 4 x 2 accumulated micro-batches == 1 process x batch 16."""
    out = tmp_path / "ddp"
    run_meter(pretrain_args(shapes_world, out, *COMMON, "train.batch_size=4", "train.grad_accum=2"), processes=2)
    _assert_same_curve(one_process, out, range(1, 7))
    _assert_same_weights(one_process, out)
    assert [p.name for p in Checkpoints(out / "checkpoints").all()] == ["step_00000003", "step_00000006"]
    state = torch.load(out / "checkpoints/step_00000006/training_state.pt", weights_only=True)
    rngs = state["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"]), "each process its own RNG"


@pytest.mark.slow
def test_two_processes_that_torchrun_restarts_after_one_is_killed_resume_and_end_as_one_process(
    one_process, shapes_world, tmp_path
):
    """torchrun --max-restarts: rank 1 killed (SIGKILL) in step 5, after the checkpoint of step 3; both processes
    started again resume from it. The restarted processes could not set up the second (gloo) process group, which
    finds its peers' addresses of before the restart in the store: the restart failed, or hung."""
    out = tmp_path / "restarted"
    args = pretrain_args(shapes_world, out, *COMMON, "train.batch_size=8")
    done = torchrun_with_faults(args, ["backward:5:SIGKILL:1"], 2, tmp_path, "--max-restarts=1")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resumed from" in done.stderr and "step_00000003" in done.stderr
    _assert_same_curve(one_process, out, range(1, 7))
    _assert_same_weights(one_process, out)


@pytest.mark.slow
def test_a_run_of_two_processes_resumed_by_one_accumulating_two_ends_as_one_process(one_process, shapes_world,
                                                                                     tmp_path):  # fmt: skip
    """A job requeued on half its GPUs keeps its steps of 16 samples with train.grad_accum=2; left at 1, it is refused
    (it went on with steps of 8 and a warning)."""
    out = tmp_path / "requeued"
    run_meter(pretrain_args(shapes_world, out, *COMMON, "train.batch_size=8", "train.stop_at=3"), processes=2)
    refused = run_meter([*pretrain_args(shapes_world, out, *COMMON, "train.batch_size=8"), "--resume", "latest"],
                        check=False)  # fmt: skip
    assert refused.returncode == 2 and "resume with train.grad_accum=2 or train.batch_size=16" in refused.stderr
    run_meter([*pretrain_args(shapes_world, out, *COMMON, "train.batch_size=8", "train.grad_accum=2"), "--resume",
               "latest"])  # fmt: skip
    _assert_same_curve(one_process, out, range(1, 7))
    _assert_same_weights(one_process, out)


@pytest.mark.slow
def test_two_fsdp_processes_stopped_and_resumed_make_the_loss_curve_of_one_process(one_process, shapes_world, tmp_path):
    out = tmp_path / "fsdp"
    args = pretrain_args(shapes_world, out, *COMMON, "train.batch_size=8", "train.parallel=fsdp")
    run_meter([*args, "train.stop_at=3"], processes=2)
    assert Checkpoints(out / "checkpoints").latest().name == "step_00000003"
    run_meter([*args, "--resume", "latest"], processes=2)
    _assert_same_curve(one_process, out, range(1, 7))
    _assert_same_weights(one_process, out)  # gathered from the shards into one model folder


@pytest.mark.slow
def test_fsdp_in_one_process_under_torchrun_shards_and_makes_the_loss_curve_of_one_process(one_process, shapes_world,
                                                                                          tmp_path):  # fmt: skip
    """A single-GPU debugging run of a sharded job: FSDP2 over a group of one, the same steps as no wrapping."""
    out = tmp_path / "fsdp1"
    done = run_meter(pretrain_args(shapes_world, out, *COMMON, "train.batch_size=16", "train.parallel=fsdp"),
                     torchrun=True)  # fmt: skip
    assert re.search(r"FSDP2: \d+ layers and the rest of the task sharded over 1 process", done.stderr), (
        done.stderr[-2000:])  # fmt: skip
    _assert_same_curve(one_process, out, range(1, 7))
    _assert_same_weights(one_process, out)


@pytest.mark.slow
def test_two_fsdp_processes_recomputing_activations_make_the_loss_curve_of_one_plain_process(shapes_world, tmp_path):
    """FSDP2's units are the layers that recompute: each one's parameters are gathered again for the recomputation
    in the backward."""
    run_meter(pretrain_args(shapes_world, tmp_path / "one", *COMMON, *TWO_LAYERS, "train.batch_size=16"))
    out = tmp_path / "fsdp"
    done = run_meter(pretrain_args(shapes_world, out, *COMMON, *TWO_LAYERS, "train.batch_size=8", "train.parallel=fsdp",
                                   "train.activation_checkpointing=true"), processes=2)  # fmt: skip
    assert "activation checkpointing: 8 layers recompute" in done.stderr, done.stderr[-2000:]
    _assert_same_curve(tmp_path / "one", out, range(1, 7))
    _assert_same_weights(tmp_path / "one", out)


@pytest.mark.slow
def test_after_a_fine_tune_of_two_processes_the_first_evaluates_and_the_other_waits_or_fails_with_it(
    micro_checkpoints, shapes_tasks_world, tmp_path
):
    """Both processes train; the first alone evaluates and writes the files, the other waits for it (longer than a
    training collective may wait) and stops with it if the evaluation fails."""
    finetune = ["finetune", *MICRO, *EXACT, f"data.root={shapes_tasks_world}", "task=snli_ve", "train.max_steps=2",
                f"train.init_from={micro_checkpoints('pretrain')}"]  # fmt: skip
    done = run_meter([*finetune, f"train.out={tmp_path / 'good'}"], processes=2)
    assert done.stdout.count('"accuracy"') == 1, done.stdout  # printed by the first process only
    assert (tmp_path / "good" / "snli_ve_accuracy_dev.json").is_file()
    # an evaluation split whose image is missing, with no bad sample allowed: it fails after training (the split's
    # file itself is read before training)
    root = tmp_path / "data"
    root.mkdir()
    for entry in shapes_tasks_world.iterdir():
        if entry.name != "snli_ve":
            (root / entry.name).symlink_to(entry)
    (root / "snli_ve").mkdir()
    for entry in (shapes_tasks_world / "snli_ve").iterdir():
        (root / "snli_ve" / entry.name).symlink_to(entry)
    row = json.loads((shapes_tasks_world / "snli_ve/snli_ve_dev.jsonl").read_text().splitlines()[0])
    (root / "snli_ve/snli_ve_gone.jsonl").write_text(json.dumps({**row, "Flickr30K_ID": "999999999"}) + "\n")
    failed = run_meter([*finetune, f"train.out={tmp_path / 'bad'}", f"data.root={root}", "snli_ve.eval_split=gone",
                        "data.max_bad_samples=0"], processes=2, check=False)  # fmt: skip
    assert failed.returncode != 0
    assert "999999999" in failed.stderr, failed.stderr[-3000:]
    assert "the first process failed, so this one stops too: DataError" in failed.stderr, failed.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_choose_the_best_checkpoint_after_each_of_their_epochs(micro_checkpoints, shapes_tasks_world,
                                                                              tmp_path):  # fmt: skip
    """66 examples in global batches of 2 x 8: an epoch is 4 steps (one process alone: 8). The first process scores,
    the other waits; both train on."""
    out = tmp_path / "run"
    run_meter(["finetune", *MICRO, *EXACT, f"data.root={shapes_tasks_world}", "task=snli_ve", "train.max_steps=6",
               f"train.init_from={micro_checkpoints('pretrain')}", "train.best_on=dev", "snli_ve.eval_split=test",
               f"train.out={out}"], processes=2)  # fmt: skip
    chosen = json.loads((out / "best.json").read_text())
    assert sorted(map(int, chosen["scores"])) == [4, 6]
    best = load_file(out / "best" / "model.safetensors")
    kept = load_file(out / f"checkpoints/step_{chosen['best_step']:08d}/model.safetensors")
    assert all(best[k].equal(kept[k]) for k in kept)
    assert (out / "snli_ve_accuracy_test.json").is_file()


@pytest.mark.slow
def test_a_process_that_skipped_a_batch_of_unreadable_images_resumes_at_its_own_place(shapes_world, tmp_path):
    """Rank 1's batch of step 2 is all unreadable images: it draws one batch more than rank 0. Stopped at step 3 and
    resumed, each process goes on from its own place, so the weights equal a straight run's bit for bit."""
    from meter.data.formats.captions import read_karpathy
    from meter.data.stream import epoch_order

    world = shutil.copytree(shapes_world, tmp_path / "world")
    records = read_karpathy(world / "karpathy/dataset_coco.json", world / "images", ("train", "restval"))
    pairs = [record for record in records for _ in record.captions]
    order, batch, processes = epoch_order(len(pairs), 0, 0, True), 4, 2
    start = 1 * batch * processes + 1 * batch  # step 2 (index 1), rank 1
    doomed = {pairs[i].image for i in order[start : start + batch]}
    for image in doomed:
        Path(image).unlink()
    common = [*COMMON, "train.batch_size=4", "data.max_bad_samples=0.5", "train.deterministic=true"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_meter(pretrain_args(world, straight, *common), processes=2, timeout=300)
    run_meter([*pretrain_args(world, split, *common), "train.stop_at=3"], processes=2, timeout=300)
    saved = json.loads((split / "checkpoints/step_00000003/progress.json").read_text())["batches_per_process"]
    assert saved[1] == saved[0] + 1, saved  # the skipped batch: rank 1 is a batch ahead
    run_meter([*pretrain_args(world, split, *common), "--resume", "latest"], processes=2, timeout=300)
    a = load_file(straight / "checkpoints/step_00000006/model.safetensors")
    b = load_file(split / "checkpoints/step_00000006/model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)


class EpochReads:
    """Which images each of `processes` processes reads at each step of epoch 0 (batches of `per_process`)."""

    def __init__(self, world: Path, per_process: int, processes: int) -> None:
        from meter.data.formats.captions import read_karpathy
        from meter.data.stream import epoch_order

        records = read_karpathy(world / "karpathy/dataset_coco.json", world / "images", ("train", "restval"))
        self.pairs = [record for record in records for _ in record.captions]
        self.order = epoch_order(len(self.pairs), 0, 0, True)
        self.per_process, self.processes = per_process, processes

    def read(self, steps: range, rank: int) -> set[int]:
        """The pairs (indices) the process reads."""
        return {int(i) for step in steps
                for i in self.order[(step * self.processes + rank) * self.per_process:][:self.per_process]}  # fmt: skip

    def images(self, steps: range, rank: int) -> set[str]:
        return {str(self.pairs[i].image) for i in self.read(steps, rank)}

    def bad_pairs(self, steps: range, rank: int, missing: set[str]) -> set[int]:
        """The pairs the process reads whose image is missing: what the budget counts (pairs, not images)."""
        return {i for i in self.read(steps, rank) if str(self.pairs[i].image) in missing}


@pytest.mark.slow
def test_bad_samples_of_every_process_are_listed_and_counted_against_one_budget(shapes_world, tmp_path):
    """Missing images met by process 1 are listed all the same (rank 0 writes the list), and the budget is the
    run's: with both processes over it together (each alone within it), both stop with the budget's message."""
    world = shutil.copytree(shapes_world, tmp_path / "world")
    common = [*COMMON, "train.batch_size=4", "train.checkpoint_every=100"]
    reads = EpochReads(world, per_process=4, processes=2)
    only_rank1 = reads.images(range(1, 2), rank=1) - reads.images(range(6), rank=0)
    assert only_rank1, "step 2 of process 1 has an image process 0 never reads"
    for image in only_rank1:
        Path(image).unlink()
    listed = tmp_path / "listed"
    run_meter([*pretrain_args(world, listed, *common, "data.max_bad_samples=0.5")], processes=2, timeout=300)
    written = [json.loads(line) for line in (listed / "bad_samples.jsonl").read_text().splitlines()]
    assert {line["path"] for line in written} == only_rank1
    assert len({line["sample"] for line in written}) == len(written), "each pair of a missing image listed once"
    # the pairs process 1 met: its 6 steps', and those of the batch it reads ahead for each batch of bad samples
    steps, ahead = reads.bad_pairs(range(6), 1, only_rank1), reads.bad_pairs(range(7), 1, only_rank1)
    assert len(steps) <= len(written) <= len(ahead)

    doomed = only_rank1 | (reads.images(range(2, 3), rank=0) - reads.images(range(6), rank=1))
    for image in doomed:
        Path(image).unlink(missing_ok=True)
    met = [reads.bad_pairs(range(6), rank, doomed) for rank in (0, 1)]
    ahead = [reads.bad_pairs(range(7), rank, doomed) for rank in (0, 1)]  # with a batch read ahead
    bad, total = len(met[0] | met[1]), len(reads.pairs)
    fraction = (bad - 0.5) / total  # a budget of all the bad pairs the run meets but one
    assert int(fraction * total) == bad - 1 >= max(map(len, ahead)), "each process alone stays within it"
    over = tmp_path / "over"
    done = run_meter([*pretrain_args(world, over, *common, f"data.max_bad_samples={fraction}")], processes=2,
                     timeout=300, check=False)  # fmt: skip
    assert done.returncode != 0
    counted = re.search(rf"skipped (\d+) of {total} samples, more than the budget of {bad - 1} ", done.stderr)
    assert counted and bad <= int(counted.group(1)) <= len(ahead[0] | ahead[1]), done.stderr[-3000:]
    assert len(read_metrics(over / "metrics.jsonl")) < 6, "stopped before the end"


@pytest.mark.slow
def test_a_process_whose_data_is_all_unreadable_stops_every_process_with_a_clear_error(shapes_world, tmp_path):
    """A process that meets only unreadable images drew empty batch after empty batch forever (its bad samples only
    noted, never counted), deaf to SIGTERM, while the other waited for it. Now it stops: at once when its own bad
    samples spend the budget, the other meeting it in the step's reduction; else after two epochs of its batches."""
    world = shutil.copytree(shapes_world, tmp_path / "world")
    common = [*COMMON, "train.batch_size=4", "data.num_workers=0"]
    reads = EpochReads(world, per_process=4, processes=2)
    kept = reads.images(range(1), rank=0) - reads.images(range(1), rank=1)  # process 0 makes its first step
    assert kept and reads.bad_pairs(range(1), 0, kept) == reads.read(range(1), 0)
    for image in (world / "images").rglob("*.*"):
        if str(image) not in kept:
            image.unlink()
    done = run_meter_with_faults(pretrain_args(world, tmp_path / "alone", *common, "data.max_bad_samples=0"),
                                 processes=2, timeout=120)  # fmt: skip
    for returncode, stderr in done:  # process 1 spent the budget alone; process 0 waited in the step's reduction
        assert returncode != 0 and re.search(r"skipped \d+ of \d+ samples, more than the budget of 0 ", stderr), stderr
    assert not (tmp_path / "alone/metrics.jsonl").is_file() or not read_metrics(tmp_path / "alone/metrics.jsonl")

    for image in kept:
        Path(image).unlink()
    done = run_meter_with_faults(pretrain_args(world, tmp_path / "none", *common, "data.max_bad_samples=1"),
                                 processes=2, timeout=120)  # fmt: skip
    for returncode, stderr in done:  # within the budget (all may be bad): two epochs of empty batches end it
        assert returncode != 0 and "processes 0, 1 of 2 found no readable batch in" in stderr, stderr[-3000:]


@pytest.mark.slow
def test_a_shard_corpus_run_of_two_processes_is_not_resumed_by_one(shapes_world, tmp_path):
    """The shard stream cuts each epoch into slots per process: resumed by another number of processes, part of
    the epoch would be read twice and part never. Refused, naming the number to resume with."""
    from meter.data.formats.captions import coco_source
    from meter.data.shard_writer import write_shards
    from meter.errors import ConfigError

    source = coco_source(shapes_world, "karpathy/dataset_coco.json", images="images")
    write_shards(source, tmp_path / "shards", shard_size=10, progress=False)
    args = [*COMMON, "train.batch_size=4", f"data.sources=[{{path: {tmp_path / 'shards'}}}]", "train.stop_at=3"]
    out = tmp_path / "run"
    run_meter(pretrain_args(shapes_world, out, *args), processes=2, timeout=300)
    cfg = load_config(None, [f"data.root={shapes_world}", f"train.out={out}", *MICRO, *args[:-1]])
    with pytest.raises(ConfigError, match=r"written by 2 processes, this run has 1: a shard corpus .* resume with 2"):
        run_pretrain(cfg, resume="latest")


@pytest.mark.slow
def test_meter_evaluate_under_torchrun_evaluates_on_the_first_process_and_ends(micro_checkpoints, shapes_tasks_world,
                                                                               tmp_path):  # fmt: skip
    """Without training before it (`meter evaluate`, a requeued `finetune --resume latest` of a run stopped while it
    evaluated), the first process joined the launcher's group alone: the other had returned, and it waited for ever."""
    out = tmp_path / "eval"
    done = run_meter(["evaluate", "vqa", "--checkpoint", str(micro_checkpoints("vqa")), "--out", str(out),
                      f"data.root={shapes_tasks_world}", "train.progress=false"], processes=2, timeout=150)  # fmt: skip
    assert done.stdout.count('"overall"') == 1 and (out / "vqa_accuracy_val2014.json").is_file()
    assert json.loads(done.stdout)["overall"] >= 0  # one JSON document: the other process printed a `{}` after it
