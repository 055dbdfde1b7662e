from collections import Counter

import numpy as np

from meter.data.shard_plan import balanced_range, lane_offsets, slot_batch_start


def test_balanced_ranges_tile_the_epoch_with_lengths_differing_by_at_most_one():
    rng = np.random.default_rng(0)
    for total, parts in zip(rng.integers(0, 500, 50), rng.integers(1, 40, 50), strict=True):
        ranges = [balanced_range(int(total), int(parts), i) for i in range(parts)]
        covered = [p for start, length in ranges for p in range(start, start + length)]
        assert covered == list(range(total))
        assert max(length for _, length in ranges) - min(length for _, length in ranges) <= 1


def test_lane_offsets_count_the_positions_each_lane_has_given():
    for lanes in (1, 3, 4):
        for position in range(30):
            given = Counter(p % lanes for p in range(position))
            assert lane_offsets(position, lanes) == [given[lane] for lane in range(lanes)]


def test_a_rank_batch_comes_from_its_stream_in_turn():
    for streams in (1, 2, 8):
        for start in range(20):
            given = Counter(n % streams for n in range(start))
            assert [slot_batch_start(start, s, streams) for s in range(streams)] == [given[s] for s in range(streams)]
