"""A worker on another host is judged alive by how long ago its status file was written, by the file system's clock:
the hosts of a cluster may disagree by minutes, and a skew past the stale limit reran a live cell (or left a dead one
waiting)."""

import os
import time

from meter.study.records import STALE_S, STATUS, status_alive, write_json


def _write_status(folder, heartbeat: float) -> dict:
    status = {"state": "running", "pid": 1, "host": "another-host.cluster", "run": "pretrain", "heartbeat": heartbeat}
    write_json(folder / STATUS, status)
    return status


def test_a_worker_whose_host_clock_is_behind_is_alive_while_it_writes(tmp_path):
    status = _write_status(tmp_path, heartbeat=time.time() - 10 * STALE_S)  # its clock is 25 minutes behind
    assert status_alive(status, tmp_path)


def test_a_worker_whose_host_clock_is_ahead_is_stale_once_it_stops_writing(tmp_path):
    status = _write_status(tmp_path, heartbeat=time.time() + 10 * STALE_S)  # its clock is 25 minutes ahead
    long_ago = time.time() - 2 * STALE_S
    os.utime(tmp_path / STATUS, (long_ago, long_ago))  # its last heartbeat, 5 minutes ago by the file system's clock
    assert not status_alive(status, tmp_path)


def test_a_status_that_is_gone_or_not_running_is_not_alive(tmp_path):
    status = _write_status(tmp_path, heartbeat=time.time())
    assert not status_alive({**status, "state": "done"}, tmp_path)
    (tmp_path / STATUS).unlink()
    assert not status_alive(status, tmp_path)
    assert not list(tmp_path.iterdir())  # the clock's probe file is removed
