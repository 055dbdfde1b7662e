"""Skipping bad samples: each is counted and named, and past a budget the run stops with a clear message."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from meter.atomic_files import write_text_atomically
from meter.errors import DataError

log = logging.getLogger(__name__)
WARN_FIRST = 5  # name this many bad samples in the log; the rest go to the file only


@dataclass(frozen=True)
class BadSample:
    """Stands in a batch for a sample that could not be read."""

    path: str
    reason: str
    key: str = ""  # the sample, where one path serves several (an image's captions, its questions): "" the path

    @property
    def sample(self) -> str:
        """What the budget counts once: the sample (a pair, a question), not the image it shares with others."""
        return self.key or self.path


class BadSampleBudget:
    """Counts bad samples; raises once more than `max_fraction` of `total` samples are bad.

    Training meets a sample again every epoch, so a sample counts once (its key: an image with five captions is five
    pairs of the total, and five bad ones). Evaluation (`per_sample`) reads each sample once and counts every one:
    five questions about one missing image are five questions it could not answer.

    With several processes (`shared`) each one reads its own part of the data: `record` only notes a bad sample,
    and the training loop hands every process's notes to `settle` on all of them at once, so that the budget is
    the whole run's, one list names them all (written by the process given `log_file`), and every process stops
    at the same step when it is spent (one process stopping alone would leave the others waiting for it).
    """

    def __init__(
        self, max_fraction: float, total: int, log_file: str | Path | None = None,
        setting: str = "data.max_bad_samples", per_sample: bool = False, shared: bool = False,
        moved: tuple[str | Path, str | Path] | None = None,
    ) -> None:  # fmt: skip
        self.setting = setting  # the option that sets the budget, named in the message
        # rounded first: 0.29 x 100 is 28.999999999999996 in floating point, and allowed 28
        self.allowed = int(round(max_fraction * total, 6))
        self.total = total
        self.max_fraction = max_fraction
        self.log_file = Path(log_file) if log_file else None
        self.per_sample = per_sample
        self.bad: dict[str, str] = {}  # sample -> reason, the first reason of each sample
        self.samples = 0  # with per_sample: every sample recorded
        self.shared = shared
        self.pending: list[BadSample] = []  # with shared: noted here, not yet settled
        # (data.root now, the run's first data.root): a run resumed with its data elsewhere names a sample as at the
        # first, so that one met at either place counts once (the list keeps the path read as the sample's file);
        # the paths of a dataset's samples join data.root as given
        self.moved: tuple[str, str] | None = None
        if moved and Path(moved[0]) != Path(moved[1]):
            self.moved = (str(Path(moved[0])).rstrip("/") + "/", str(Path(moved[1])).rstrip("/") + "/")
        self._pending_new: set[str] = set()  # ... the samples among them the budget has not counted yet

    @property
    def count(self) -> int:
        return self.samples if self.per_sample else len(self.bad)

    def _counted(self, sample: BadSample) -> bool:
        # a list written before samples had keys names the image: its pairs counted once, as then
        return not self.per_sample and (sample.sample in self.bad or bool(sample.key and sample.path in self.bad))

    def record(self, sample: BadSample) -> None:
        sample = self._at_first_root(sample)
        if not self.shared:
            self.settle([sample])
            return
        if self.per_sample or not (self._counted(sample) or sample.sample in self._pending_new):
            self.pending.append(sample)  # a sample met again (a process reading only bad ones, epoch after epoch)
            self._pending_new.add(sample.sample)  # is noted once: what a process sends the others stays small

    def _at_first_root(self, sample: BadSample) -> BadSample:
        name = sample.sample
        if self.moved is not None and name.startswith(self.moved[0]):
            return replace(sample, key=self.moved[1] + name[len(self.moved[0]) :])
        return sample  # named by its question or example, not its file: the same wherever the data is

    @property
    def spent_alone(self) -> bool:
        """Whether this process's own samples noted since the last settling spend the budget whatever the other
        processes met: it need read no further (its data may be all unreadable) before all settle and stop."""
        return self.count + len(self._pending_new if not self.per_sample else self.pending) > self.allowed

    def take_pending(self) -> list[BadSample]:
        taken, self.pending = self.pending, []
        self._pending_new = set()
        return taken

    def settle(self, samples: list[BadSample]) -> None:
        """Counts `samples`; raises once the budget is spent."""
        new = []
        for sample in samples:
            if self._counted(sample):
                continue
            self.bad.setdefault(sample.sample, sample.reason)
            self.samples += 1
            new.append(sample)
            if self.count <= WARN_FIRST and (self.log_file is not None or not self.shared):
                log.warning("data: skipped %s", sample.reason)
        if new and self.log_file is not None:
            with self.log_file.open("a") as f:
                f.writelines(json.dumps(_entry(s.path, s.reason, s.key)) + "\n" for s in new)
        if self.count > self.allowed:
            first = next(iter(self.bad.values()))
            where = f"; see {self.log_file}" if self.log_file else ""
            raise DataError(
                f"skipped {self.count:,} of {self.total:,} samples, more than the budget of {self.allowed:,}"
                f" ({self.max_fraction:.1%}, {self.setting}): first: {first}{where}"
            )

    def restore(self, bad: dict[str, str]) -> None:
        """The samples a run had skipped before it stopped: resumed, it goes on counting from them (a sample counts
        once in a run, so meeting them again costs nothing)."""
        self.bad.update(bad)
        self.samples = len(self.bad)

    def summary(self) -> str:
        return f"skipped {self.count:,} of {self.total:,} samples (budget {self.allowed:,})"


def _entry(path: str, reason: str, key: str = "") -> dict[str, str]:
    """A line of bad_samples.jsonl: the file, why, and the sample where the file serves several."""
    return {"path": path, "reason": reason, **({"sample": key} if key else {})}


def continued_list(path: Path, resumed: bool, keep: int | Collection[str] = -1) -> dict[str, str]:
    """A training run's list of bad samples as it goes on: a resumed run's (sample -> reason; a line cut short by a
    kill left out, and the file rewritten without it), or none for a run that starts (a killed first attempt's list
    is deleted: the run meets those samples again). `keep` (>= 0): the samples listed when the checkpoint resumed
    from was written; the ones listed after it are left out, as the run meets them again; or the samples to keep by
    name (a preparation's kept shards)."""
    if not resumed or not path.is_file():
        path.unlink(missing_ok=True)
        return {}
    listed: dict[str, str] = {}
    lines: dict[str, str] = {}
    written = path.read_text(errors="replace")
    for line in written.splitlines():
        try:
            entry = json.loads(line)
            sample = str(entry.get("sample") or entry["path"])
            if sample not in listed:
                listed[sample] = str(entry["reason"])
                lines[sample] = json.dumps(_entry(str(entry["path"]), listed[sample], str(entry.get("sample") or "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    if not isinstance(keep, int):
        listed = {sample: reason for sample, reason in listed.items() if sample in keep}
    elif 0 <= keep < len(listed):  # in the order they were met: the first `keep` were met before the checkpoint
        listed = dict(itertools.islice(listed.items(), keep))
    lines = {sample: lines[sample] for sample in listed}
    whole = "".join(line + "\n" for line in lines.values())
    if whole != written:  # a line cut short (or a list written otherwise): appended to, it would glue to the next
        write_text_atomically(path, whole)
    return listed


def warn_skipped(what: str, skipped: list[BadSample]) -> None:
    """One warning for the records a reader leaves out (empty captions, say): how many, and the first few by name,
    as a budget names them."""
    if skipped:
        named = "; ".join(s.reason for s in skipped[:WARN_FIRST])
        more = f" (and {len(skipped) - WARN_FIRST:,} more)" if len(skipped) > WARN_FIRST else ""
        log.warning("data: skipped %d %s: %s%s", len(skipped), what, named, more)


def evaluation_budget(max_fraction: float, total: int, log_file: Path) -> BadSampleBudget:
    """The budget of one evaluation over `total` samples: every unreadable sample counts, each is listed in
    `log_file` (started afresh: an earlier evaluation's list is not this one's), and past `max_fraction`
    (data.max_bad_samples, as in training) the evaluation stops, naming the first."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.unlink(missing_ok=True)
    return BadSampleBudget(max_fraction, total, log_file, per_sample=True)


def count_bad(budget: BadSampleBudget | None, sample: BadSample) -> None:
    """Counts `sample` against `budget`; without a budget an unreadable sample is an error."""
    if budget is None:
        raise DataError(sample.reason.removeprefix("data: "))
    budget.record(sample)


def skipped_fields(budget: BadSampleBudget) -> dict[str, int | str]:
    """What a score file says of the samples an evaluation skipped: how many, and where they are listed."""
    listed = {"skipped_list": str(budget.log_file)} if budget.count and budget.log_file else {}
    return {"skipped": budget.count, **listed}


def warn_evaluation_skips(what: str, budget: BadSampleBudget, counted: str) -> None:
    """After an evaluation within its budget: `counted` says how the skipped samples count (the leaderboard file
    needs a row for each, and the score is the official score of that file)."""
    if budget.count:
        log.warning("%s: %s; %s; list: %s", what, budget.summary(), counted, budget.log_file)
