"""Preemption and Ctrl-C (issue 14 item 1, issue 15 item 8): real signals sent to real training processes at a chosen
moment (see tests/faults.py: the process signals itself when the training reaches its N-th backward, or the write of
a checkpoint's training state).

SIGTERM or SIGUSR1 in the middle of step 5 (its first of two micro-batches): the process finishes step 5, writes
its checkpoint and exits with 75; resumed, the run ends bitwise where a run that was never stopped ends. A second
signal during that checkpoint's write: exit at once, no step_5 folder, no temporary one. Ctrl-C: exit 130 without a
traceback, naming the last checkpoint. Two processes, only one signalled: both stop after the same step.
"""

import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from meter.models.checksums import verify_checksums
from meter.train.checkpoint import TASK_WEIGHTS, Checkpoints
from meter.train.metrics_log import read_metrics
from meter.train.stop_signals import INTERRUPTED, PREEMPTED
from tests.conftest import MICRO
from tests.faults import applied_steps, free_port, run_meter_with_faults, start_meter
from tests.runner import EXACT, pretrain_args

RUN = ["train.device=cpu", "train.max_steps=8", "train.checkpoint_every=3", "train.grad_accum=2", "objectives.mim=1",
       "train.deterministic=true", "model.fusion.dropout=0.1"]  # fmt: skip
IN_STEP_5 = "backward:9"  # step 5's first micro-batch (2 per step)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors") | load_file(checkpoint / TASK_WEIGHTS)


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differing, differing[:5]


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("sent", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_finishes_the_step_writes_its_checkpoint_and_exits_75(shapes_world, tmp_path, sent):
    out = tmp_path / "run"
    [(code, stderr)] = run_meter_with_faults(pretrain_args(shapes_world, out, *RUN), [f"{IN_STEP_5}:{sent}"])
    assert code == PREEMPTED == 75, stderr[-3000:]
    checkpoint = out / "checkpoints/step_00000005"
    assert _last_line(stderr) == (f"meter: stopped by {sent} after step 5: checkpoint {checkpoint} written; continue "
                                  "with --resume latest (exit status 75: requeue the job)")  # fmt: skip
    assert _checkpoints(out) == ["step_00000003", "step_00000005"]
    assert verify_checksums(out / "checkpoints/step_00000005")
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_a_stop_signal_that_reaches_the_data_workers_too_stops_the_run_the_same_way(shapes_world, tmp_path):
    """A cluster signals every process of the job: the data workers ignore it, their main process stops them."""
    out = tmp_path / "run"
    args = pretrain_args(shapes_world, out, *RUN, "data.num_workers=2")
    [(code, stderr)] = run_meter_with_faults(args, [f"{IN_STEP_5}:group-SIGUSR1"], start_new_session=True)
    assert code == PREEMPTED, stderr[-3000:]
    assert _last_line(stderr).startswith("meter: stopped by SIGUSR1 after step 5: checkpoint ")
    assert _checkpoints(out) == ["step_00000003", "step_00000005"]


def test_a_second_signal_while_the_checkpoint_is_written_exits_at_once_leaving_no_partial_one(shapes_world, tmp_path):
    out = tmp_path / "run"
    faults = [f"{IN_STEP_5}:SIGUSR1", "save:.step_00000005.tmp:SIGTERM"]  # the second while step 5's state is written
    [(code, stderr)] = run_meter_with_faults(pretrain_args(shapes_world, out, *RUN), faults)
    assert code == PREEMPTED, stderr[-3000:]
    assert _last_line(stderr) == (f"meter: stopped at once by a second SIGTERM (a checkpoint being written was "
                                  f"dropped): the last checkpoint is {out}/checkpoints/step_00000003; continue with "
                                  f"--resume latest")  # fmt: skip
    assert _checkpoints(out) == ["step_00000003"], "no step_00000005 folder, no temporary one"


@pytest.mark.slow
def test_the_same_signal_delivered_twice_is_one_request(shapes_world, tmp_path):
    """A scheduler signals every process of the job and torchrun forwards what it got: a worker sees SIGTERM twice
    within moments. The checkpoint is still written (SIGUSR2: submitit's time-limit warning, a stop signal too)."""
    out = tmp_path / "run"
    for signal_name in ("SIGTERM", "SIGUSR2"):
        faults = [f"{IN_STEP_5}:{signal_name}", f"save:.step_00000005.tmp:{signal_name}"]
        [(code, stderr)] = run_meter_with_faults(pretrain_args(shapes_world, out / signal_name, *RUN), faults)
        assert code == PREEMPTED, stderr[-3000:]
        assert _last_line(stderr).startswith(f"meter: stopped by {signal_name} after step 5: checkpoint ")
        assert _checkpoints(out / signal_name) == ["step_00000003", "step_00000005"]


def test_ctrl_c_stops_without_a_traceback_and_names_the_last_checkpoint(shapes_world, tmp_path):
    out = tmp_path / "run"
    [(code, stderr)] = run_meter_with_faults(pretrain_args(shapes_world, out, *RUN), [f"{IN_STEP_5}:SIGINT"])
    assert code == INTERRUPTED == 128 + signal.SIGINT, stderr[-3000:]
    assert _last_line(stderr) == (f"meter: interrupted (Ctrl-C) at step 5: the last checkpoint is "
                                  f"{out}/checkpoints/step_00000003; continue with --resume latest")  # fmt: skip
    assert _checkpoints(out) == ["step_00000003"]


@pytest.mark.slow
def test_a_preempted_run_resumed_ends_bitwise_where_a_run_never_stopped_ends(shapes_world, tmp_path):
    [(code, stderr)] = run_meter_with_faults(pretrain_args(shapes_world, tmp_path / "straight", *RUN))
    assert code == 0, stderr[-3000:]
    out = tmp_path / "run"
    [(code, stderr)] = run_meter_with_faults(pretrain_args(shapes_world, out, *RUN), [f"{IN_STEP_5}:SIGUSR1"])
    assert code == PREEMPTED, stderr[-3000:]
    [(code, stderr)] = run_meter_with_faults([*pretrain_args(shapes_world, out, *RUN), "--resume", "latest"])
    assert code == 0, stderr[-3000:]
    _assert_same_weights(tmp_path / "straight/checkpoints/step_00000008", out / "checkpoints/step_00000008")
    straight, resumed = read_metrics(tmp_path / "straight/metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [r["train/mlm_loss"] for r in resumed] == [r["train/mlm_loss"] for r in straight]


@pytest.mark.slow
def test_two_processes_stop_after_the_same_step_when_one_is_signalled_and_resume_exactly(shapes_world, tmp_path):
    """Started as srun starts them (one process each); SIGTERM reaches process 1 alone, in step 3. Two micro-batches a
    step: DDP's first backward reduced its partial sum (it records the static graph), the resumed run's in step 4 where
    the straight run's was in step 1, and the weights drifted (3.7e-9)."""
    run = [*EXACT, "train.max_steps=6", "train.checkpoint_every=10", "train.batch_size=4", "train.grad_accum=2",
           "objectives.mim=1", "objectives.itm_group_size=4"]  # fmt: skip
    straight = run_meter_with_faults(pretrain_args(shapes_world, tmp_path / "straight", *run), processes=2)
    assert [code for code, _ in straight] == [0, 0], straight[0][1][-3000:]
    out, log = tmp_path / "run", tmp_path / "steps"
    stopped = run_meter_with_faults(pretrain_args(shapes_world, out, *run), ["backward:5:SIGTERM:1"], processes=2,
                                    env={"STEP_LOG": str(log)})  # fmt: skip
    assert [code for code, _ in stopped] == [PREEMPTED, PREEMPTED], stopped[0][1][-3000:]
    for _, stderr in stopped:
        assert _last_line(stderr).startswith("meter: stopped by SIGTERM (sent to process 1) after step 3: checkpoint ")
    assert applied_steps(log, 0) == applied_steps(log, 1) == [1, 2, 3]
    assert [p.name for p in Checkpoints(out / "checkpoints").all()] == ["step_00000003"]
    resumed = run_meter_with_faults([*pretrain_args(shapes_world, out, *run), "--resume", "latest"], processes=2)
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:]
    a = load_file(tmp_path / "straight/checkpoints/step_00000006/model.safetensors")
    b = load_file(out / "checkpoints/step_00000006/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_second_signal_while_the_first_process_writes_stops_every_process_at_once(shapes_world, tmp_path):
    """Both processes signalled in step 3, then process 0 again while it writes step 3's checkpoint (a scheduler's
    grace period over): process 1 waited for the write that never came until process 0's store went, about a
    minute later, and exited 1; the job's SIGKILL came first, and the requeue that exit 75 asks for never did."""
    import time

    run = [
        *EXACT,
        "train.max_steps=6",
        "train.checkpoint_every=10",
        "train.batch_size=4",
        "objectives.itm_group_size=4",
    ]
    out = tmp_path / "run"
    start = time.monotonic()
    faults = ["backward:3:SIGTERM", "save:.step_00000003.tmp:SIGUSR1:0"]  # the second to process 0 alone
    stopped = run_meter_with_faults(pretrain_args(shapes_world, out, *run), faults, processes=2)
    assert [code for code, _ in stopped] == [PREEMPTED, PREEMPTED], stopped[1][1][-3000:]
    assert time.monotonic() - start < 45, "not the minute rank 0 waited for the others to leave"
    assert _last_line(stopped[0][1]).startswith("meter: stopped at once by a second SIGUSR1")
    assert _last_line(stopped[1][1]) == ("meter: the first process was stopped at once while it wrote the checkpoint "
                                         "of step 3, so this one stops too (the checkpoint was dropped)")  # fmt: skip
    assert not (out / "checkpoints").exists() or _checkpoints(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("signalled", [0, 1])
def test_a_stop_signal_to_one_process_before_training_ends_both_in_seconds(shapes_world, tmp_path, signalled: int):
    """Outside training the signalled process stops at once; process 0 so stopped then waited a minute for the
    others to leave, which waited for it in a collective. Now it leaves at once and the other stops on the closed
    connection (srun's status: the highest, 75)."""
    import time

    run = [*EXACT, "train.max_steps=6", "train.batch_size=4", "objectives.itm_group_size=4"]
    start = time.monotonic()
    stopped = run_meter_with_faults(pretrain_args(shapes_world, tmp_path / "run", *run),
                                    [f"init:1:SIGTERM:{signalled}"], processes=2)  # fmt: skip
    assert time.monotonic() - start < 40, "not the minute process 0 waited for the others"
    assert stopped[signalled][0] == PREEMPTED, stopped[signalled][1][-3000:]
    assert _last_line(stopped[signalled][1]).startswith("meter: stopped by SIGTERM outside training")
    other = stopped[1 - signalled]
    assert other[0] == 1 and _last_line(other[1]).startswith("meter: another process of this run stopped or failed")
    # the rendezvous waits silently for every process: the first says where, and for how long at most
    assert "joining the run's 2 processes at 127.0.0.1:" in stopped[0][1] and "at most 30 minutes" in stopped[0][1]


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "status", "said"), [(signal.SIGTERM, PREEMPTED, "stopped by SIGTERM"),
                                                      (signal.SIGINT, INTERRUPTED, "interrupted")])  # fmt: skip
def test_a_stop_while_a_process_of_the_run_never_comes_ends_the_waiting_one_at_once(shapes_world, tmp_path, sent,
                                                                                     status, said):  # fmt: skip
    """Torch's rendezvous is a C++ wait in which Python runs no signal handler: a process whose peer never started
    heard neither the scheduler's SIGTERM nor Ctrl-C for the whole 30 minutes of gloo's limit (then SIGKILL: 137, not
    requeued)."""
    import time

    alone = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port())}  # fmt: skip
    (waiting,) = start_meter(pretrain_args(shapes_world, tmp_path / "run", *EXACT), env=alone)
    try:
        lines = iter(waiting.stderr.readline, "")
        assert any("joining the run's 2 processes" in line for line in lines), "it never said it waits"
        time.sleep(2)  # in torch's wait by now
        waiting.send_signal(sent)
        _, stderr = waiting.communicate(timeout=20)
    finally:
        waiting.kill()
    assert waiting.returncode == status, stderr[-3000:]
    assert _last_line(stderr).startswith(f"meter: {said} while waiting for the run's 2 processes to join")


@pytest.mark.slow
def test_a_stop_signal_to_a_process_waiting_for_the_final_evaluation_is_dropped_once_it_is_done(
    micro_checkpoints, shapes_tasks_world, tmp_path
):
    """Process 1 signalled while process 0 evaluated the fine-tuned model: process 0 finished and exited 0, process 1
    exited 75, and the requeued job evaluated the whole split again. Process 0 pauses in its evaluation (SIGSTOP)
    while process 1 is signalled."""
    import signal
    import time

    from tests.faults import start_meter

    out = tmp_path / "run"
    args = ["finetune", "task=snli_ve", f"data.root={shapes_tasks_world}", f"train.out={out}",
            f"train.init_from={micro_checkpoints('pretrain')}", "train.max_steps=3", *MICRO]  # fmt: skip
    first, second = start_meter(args, ["evaluate:1:SIGSTOP:0"], processes=2)
    try:
        deadline = time.monotonic() + 120
        while Path(f"/proc/{first.pid}/stat").read_text().split(") ")[1][0] != "T":  # paused in its evaluation
            assert time.monotonic() < deadline and first.poll() is None, "process 0 never reached its evaluation"
            time.sleep(0.05)
        time.sleep(1.0)  # process 1 waits for it by now
        second.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        first.send_signal(signal.SIGCONT)
        results = [(process.wait(timeout=120), process.communicate()[1]) for process in (first, second)]
    finally:
        for process in (first, second):
            process.kill()
    assert [code for code, _ in results] == [0, 0], results[1][1][-3000:]
    assert (out / "snli_ve_accuracy_dev.json").is_file()
    assert "SIGTERM came while the first process evaluated; the run is done: nothing left to stop" in results[1][1]


@pytest.mark.slow
def test_a_process_killed_is_not_reported_by_the_others_as_a_bug_of_meter(shapes_world, tmp_path):
    """Process 1 killed (out of memory, say) in step 3: process 0's collective fails, and it said "internal error ...
    a bug in meter: please report it", sending the user to the wrong process and to us."""
    run = [*EXACT, "train.max_steps=6", "train.checkpoint_every=10", "train.batch_size=4"]
    results = run_meter_with_faults(pretrain_args(shapes_world, tmp_path / "run", *run), ["backward:3:SIGKILL:1"],
                                    processes=2)  # fmt: skip
    (code, stderr), (killed, _) = results
    assert killed == -signal.SIGKILL and code == 1
    assert "internal error" not in stderr and "Traceback" not in stderr
    assert _last_line(stderr).startswith("meter: another process of this run stopped or failed ("), stderr[-3000:]


def test_a_stop_signal_while_finetune_evaluates_exits_75_and_the_requeued_job_evaluates(
    micro_checkpoints, shapes_tasks_world, tmp_path
):
    """After training, Python's default handler was back: SIGTERM ended the evaluation with 143, which a job
    script requeuing on 75 took for a failure (and the run was never evaluated)."""
    out = tmp_path / "run"
    args = ["finetune", "task=snli_ve", f"data.root={shapes_tasks_world}", f"train.out={out}",
            f"train.init_from={micro_checkpoints('pretrain')}", "train.max_steps=3", *MICRO]  # fmt: skip
    [(code, stderr)] = run_meter_with_faults(args, ["evaluate:1:SIGTERM"])
    assert code == PREEMPTED, stderr[-3000:]
    assert _last_line(stderr).startswith("meter: stopped by SIGTERM outside training, nothing to save: requeue")
    assert not (out / "snli_ve_accuracy_dev.json").exists()
    [(code, stderr)] = run_meter_with_faults([*args, "--resume", "latest"])
    assert code == 0, stderr[-3000:]
    assert (out / "snli_ve_accuracy_dev.json").is_file()


@pytest.mark.slow
def test_a_stop_signal_to_the_evaluating_process_alone_stops_both_with_75(micro_checkpoints, shapes_tasks_world,
                                                                          tmp_path):  # fmt: skip
    """The first process stopped without telling the other, which waited for it in a broadcast: cut off, it ended
    with exit 1, "a bug in meter"."""
    out = tmp_path / "run"
    args = ["finetune", "task=snli_ve", f"data.root={shapes_tasks_world}", f"train.out={out}",
            f"train.init_from={micro_checkpoints('pretrain')}", "train.max_steps=2", *MICRO]  # fmt: skip
    results = run_meter_with_faults(args, ["evaluate:1:SIGTERM:0"], processes=2)
    assert [code for code, _ in results] == [PREEMPTED, PREEMPTED], [stderr[-2000:] for _, stderr in results]
    assert "the first process was stopped, so this one stops too" in _last_line(results[1][1])


def test_a_stop_signal_in_the_last_step_exits_75_and_the_resumed_run_finishes(shapes_world, tmp_path):
    """A signal in the last step was dropped: the run went on to export and, when fine-tuning, to the whole final
    evaluation (hours on COCO), and exited 0 — or was killed after the grace period, 137: no requeue."""
    out = tmp_path / "run"
    args = pretrain_args(shapes_world, out, *RUN)
    [(code, stderr)] = run_meter_with_faults(args, ["backward:15:SIGTERM"])  # step 8's first micro-batch
    assert code == PREEMPTED, stderr[-3000:]
    assert _last_line(stderr).startswith("meter: stopped by SIGTERM after step 8: checkpoint")
    assert not (out / "model").exists()  # not exported: the resumed run does it
    [(code, stderr)] = run_meter_with_faults([*args, "--resume", "latest"])
    assert code == 0 and (out / "model" / "model.safetensors").is_file(), stderr[-3000:]


def test_a_run_stopped_error_crosses_processes_whole():
    """Told through the launcher's store (pickled), it could not be rebuilt: its status was not among its args."""
    import pickle

    from meter.train.stop_signals import RunStopped

    told = pickle.loads(pickle.dumps(RunStopped("stopped by SIGTERM", PREEMPTED, alone=True)))
    assert (str(told), told.exit_status, told.alone) == (str(RunStopped("stopped by SIGTERM", 75)), PREEMPTED, True)
