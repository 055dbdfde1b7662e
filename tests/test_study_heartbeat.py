"""A worker on another host is judged alive by how long ago its status file was written, by the file system's clock:
the hosts of a cluster may disagree by minutes, and a skew past the stale limit reran a live cell (or left a dead one
waiting)."""

import os
import time

import meter.study.records
from meter.study.records import STALE_S, STATUS, status_alive, write_json


def _write_status(folder, heartbeat: float) -> dict:
    status = {"state": "running", "pid": 1, "host": "another-host.cluster", "run": "pretrain", "heartbeat": heartbeat}
    write_json(folder / STATUS, status)
    return status


def test_a_worker_whose_host_clock_is_behind_is_alive_while_it_writes(tmp_path):
    status = _write_status(tmp_path, heartbeat=time.time() - 10 * STALE_S)  # its clock is 25 minutes behind
    assert status_alive(status, tmp_path)
    assert [entry.name for entry in tmp_path.iterdir()] == [STATUS]  # the clock's probe file is removed


def test_the_age_is_read_by_the_file_systems_clock_not_this_hosts(tmp_path, monkeypatch):
    status = _write_status(tmp_path, heartbeat=time.time())
    real_time = time.time
    monkeypatch.setattr(meter.study.records.time, "time", lambda: real_time() + 10 * STALE_S)  # this host is ahead
    assert status_alive(status, tmp_path)  # written just now by the file system's clock


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
