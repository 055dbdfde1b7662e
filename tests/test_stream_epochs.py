"""An epoch is whole optimizer steps: a step of 16 samples is the same 16 whether it is read as one micro-batch of
16, two of 8 (train.grad_accum) or two processes' 8, in every epoch, and after a resume that splits it another way."""

from __future__ import annotations

from itertools import islice

from torch.utils.data import Dataset

from meter.data.stream import BatchStream

SAMPLES = 255  # the small shapes world's captions: 15 steps of 16 an epoch, with 15 samples left over


class Numbers(Dataset):
    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> int:
        return index


def _steps(batch: int, accum: int, world: int, steps: int, start_step: int = 0) -> list[set[int]]:
    """The samples of each step from `start_step` on, over every process and micro-batch."""
    start = start_step * accum
    streams = [
        iter(BatchStream(Numbers(), batch, list, seed=3, rank=rank, world=world, grad_accum=accum, start_batch=start))
        for rank in range(world)
    ]
    return [{sample for stream in streams for micro in islice(stream, accum) for sample in micro} for _ in range(steps)]


def test_a_step_reads_the_same_samples_however_it_is_split_across_epochs():
    one = _steps(16, 1, 1, 40)  # two and a half epochs
    assert all(len(step) == 16 for step in one)
    assert _steps(8, 2, 1, 40) == one  # 31 micro-batches of 8 an epoch had shifted the second epoch by one
    assert _steps(8, 1, 2, 40) == one
    assert _steps(4, 2, 2, 40) == one


def test_a_resume_with_another_split_goes_on_where_the_straight_run_was_after_the_first_epoch():
    """Resumed at step 18 (epoch 2) as fit rescales the data position: from 18 batches of 16 to 36 of 8."""
    straight = _steps(16, 1, 1, 25)
    assert _steps(8, 2, 1, 7, start_step=18) == straight[18:]
