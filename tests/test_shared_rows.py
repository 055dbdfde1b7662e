"""The blind baseline's batches (one image expanded over the rows) keep their one image through a loader that pins
its batches, and through the copy to the device (a real pin needs CUDA: tests/test_engine_cuda.py)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from meter.data.collate import Collate
from meter.data.loader_watch import watched_batches
from meter.data.shared_rows import SharedRows, compacting, moved, restored, to_device
from meter.models.tokenizer_folder import load_tokenizer
from meter.tasks.build import tokenizer_path

IMAGE = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8)


class Questions(Dataset):
    """Questions about one shared image (as a blind ImageReader gives every sample the same tensor)."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict:
        return {"pixels": IMAGE, "text": f"question {index}?", "index": index}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_blind_batch_arrives_from_a_pinning_loader_as_one_image_over_its_rows(micro_config, workers: int):
    collate = Collate(load_tokenizer(tokenizer_path(micro_config)), max_length=16)
    with pytest.warns(UserWarning, match="pin_memory"):  # no accelerator here: the loader itself does not pin
        batches = list(watched_batches(Questions(), workers, 30.0, batch_size=3, collate_fn=collate, pin_memory=True))
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5]]
    for batch in batches:
        assert batch["pixels"].shape == (3, 3, 8, 8) and batch["pixels"].stride(0) == 0
        assert torch.equal(batch["pixels"][2], IMAGE)
        assert batch["input_ids"].stride(0) != 0  # the other tensors as they were


def test_only_shared_rows_are_compacted_and_restored():
    distinct = torch.randn(2, 4)
    compact = compacting(lambda rows: {"pixels": IMAGE.expand(5, 3, 8, 8), "ids": distinct, "n": rows})(7)
    assert isinstance(compact["pixels"], SharedRows) and compact["pixels"].row.shape == (1, 3, 8, 8)
    assert compact["ids"] is distinct and compact["n"] == 7
    back = restored(compact)
    assert back["pixels"].shape == (5, 3, 8, 8) and back["pixels"].stride(0) == 0
    assert torch.equal(back["pixels"][4], IMAGE)


def test_moving_shared_rows_copies_one_row():
    batch = to_device({"pixels": IMAGE.expand(4, 3, 8, 8), "ids": torch.ones(4, 2), "size": 4}, torch.device("cpu"))
    assert batch["pixels"].stride(0) == 0 and torch.equal(batch["pixels"][3], IMAGE)
    assert batch["size"] == 4 and moved(torch.ones(4, 2), torch.device("cpu")).stride(0) == 2
