"""A long run leaks nothing: trains the shapes world for thousands of steps with data workers, writing checkpoints
and evaluating as it goes, while a sampler reads the resident memory (VmRSS), open files and threads of the main
process and of each data worker from /proc; prints their growth per 1,000 steps after a warm-up. Linux only.

    python benchmarks/soak.py [--steps 4000] [--segment 1000] [--data shards|files] [--workers 2] [--trim]

A micro model (about 0.1M parameters, 32 px images) is pretrained with MLM + ITM in segments of --segment steps,
all in this one process: each segment resumes the run from its latest checkpoint (one every --checkpoint-every
steps, the last two kept), trains to the segment's end, and is followed by a zero-shot retrieval evaluation of that
checkpoint on the world's Flickr30k-style test split. With --data shards the captions stream from webdataset
shards written by `meter prepare`'s writer (the same workers serve a whole segment); with --data files from the
Karpathy captions and image files (new workers every epoch). With --trim, glibc's malloc_trim runs after each
evaluation, and the main RSS before and after it is printed. The first --warmup segments (2: with an evaluation and
a resume) are the warm-up: growth is measured from the end of the last of them (see `report`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from meter.config import Config, load_config
from meter.data.formats.captions import coco_source
from meter.data.shapes import WorldSpec, generate, generate_tasks
from meter.data.shard_writer import write_shards
from meter.runs import evaluate_run, run_pretrain

MICRO = [
    "model.vision.timm_kwargs={embed_dim: 32, depth: 1, num_heads: 2, patch_size: 16}",
    "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
    "model.fusion.layers=1",
    "model.fusion.width=32",
    "model.fusion.heads=2",
    "model.vision.image_size=32",
    "model.text.max_length=24",
    "train.batch_size=8",
    "train.progress=false",
    "train.device=cpu",
    "train.export=false",
]


def status(pid: int) -> dict[str, int] | None:
    """VmRSS (KiB), threads and open files of a process; None for one that is exiting (a zombie has no VmRSS)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return {"rss_kib": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
                "files": len(os.listdir(f"/proc/{pid}/fd"))}  # fmt: skip
    except (OSError, KeyError):
        return None


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


class Sampler(threading.Thread):
    """Every `every` seconds: the step (the run's last logged one) and the status of this process and its children."""

    def __init__(self, folder: Path, every: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.folder, self.every = folder, every
        self.samples: list[dict] = []
        self.phase = "train"
        self.stopped = threading.Event()

    def step(self) -> int:
        try:
            with (self.folder / "metrics.jsonl").open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                return json.loads(f.read().splitlines()[-1])["step"]
        except (FileNotFoundError, IndexError, ValueError, KeyError):
            return 0

    def run(self) -> None:
        main = os.getpid()
        while not self.stopped.wait(self.every):
            sample = {"time": time.monotonic(), "step": self.step(), "phase": self.phase, "main": status(main)}
            sample["workers"] = [found | {"pid": child} for child in children(main) if (found := status(child))]
            self.samples.append(sample)


def trimmed() -> str:
    """'; main RSS 870.1 MiB, 861.3 after malloc_trim': glibc hands back the free pages it kept."""
    before = status(os.getpid())["rss_kib"] / 1024
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return f"; main RSS {before:.1f} MiB, {status(os.getpid())['rss_kib'] / 1024:.1f} after malloc_trim"


def world(root: Path, images: int) -> Path:
    if not (root / "shapes_tasks.json").is_file():
        spec = WorldSpec(images=images, seed=0)
        generate(root, spec, progress=False)
        generate_tasks(root, spec, progress=False)
    return root


def config(args: argparse.Namespace, data: Path, out: Path) -> Config:
    overrides = [*MICRO, f"data.root={data}", f"train.out={out / 'run'}", f"train.max_steps={args.steps}",
                 f"train.checkpoint_every={args.checkpoint_every}", "train.keep_last=2", "train.log_every=10",
                 f"data.num_workers={args.workers}"]  # fmt: skip
    if args.data == "shards":
        shards = out / "shards"
        if not (shards / "manifest.json").is_file():
            write_shards(coco_source(data, "karpathy/dataset_coco.json", images="images"), shards, shard_size=50,
                         progress=False)  # fmt: skip
        overrides += [f"data.sources=[{{path: {shards}}}]", f"data.streams_per_rank={2 * max(1, args.workers)}",
                      "data.shuffle_buffer=64"]  # fmt: skip
    return load_config(None, overrides)


def evaluation_config(cfg: Config, out: Path) -> Config:
    return load_config(None, ["task=retrieval", "data.sources=[]", "retrieval.karpathy=karpathy/dataset_flickr30k.json",
                              "retrieval.images=images/flickr30k-images", "retrieval.eval_split=test",
                              f"train.out={out}"], base=cfg)  # fmt: skip


def slope(samples: list[dict], value: Callable[[dict], float]) -> float:
    """Least-squares slope of value(sample) against the step, per 1,000 steps."""
    steps = np.array([s["step"] for s in samples], dtype=float)
    if len(samples) < 2 or np.ptp(steps) == 0:
        return float("nan")
    return float(np.polyfit(steps, [value(s) for s in samples], 1)[0] * 1000)


MEASURES: dict[str, Callable[[dict], float]] = {
    "main RSS (MiB)": lambda s: s["main"]["rss_kib"] / 1024,
    "workers RSS, sum (MiB)": lambda s: sum(w["rss_kib"] for w in s["workers"]) / 1024,
    "main open files": lambda s: s["main"]["files"],
    "workers open files, sum": lambda s: sum(w["files"] for w in s["workers"]),
    "main threads": lambda s: s["main"]["threads"],
    "child processes": lambda s: len(s["workers"]),
}


def report(samples: list[dict], args: argparse.Namespace, took: float) -> None:
    """Each measure at the end of each segment; its growth per 1,000 steps from the end of the warm-up (the first
    --warmup segments, with an evaluation and a resume) to the end, evaluations and resumes included; and its median
    slope within the later segments (training alone)."""
    training = [s for s in samples if s["phase"] == "train" and s["workers"]]  # with the workers running
    ends = [*range(args.segment, args.steps, args.segment), args.steps]
    segments = [[s for s in training if end - args.segment < s["step"] <= end] for end in ends]
    last = [segment[-1] for segment in segments if segment]
    warm = last[min(args.warmup, len(last)) - 1]
    print(f"soak: {args.steps} steps ({args.data}, {args.workers} workers, a checkpoint every {args.checkpoint_every}"
          f" steps, an evaluation every {args.segment}) in {took:.0f} s; {len(samples)} samples; load average at the"
          f" end {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'at step':26}" + "".join(f"{s['step']:>9}" for s in last) + f"{'per 1k steps':>14}{'within':>9}"
          f"   (growth after step {warm['step']})")  # fmt: skip
    for name, value in MEASURES.items():
        overall = (value(last[-1]) - value(warm)) / max(1, last[-1]["step"] - warm["step"]) * 1000
        within = np.median(
            [slope(segment, value) for segment in segments[args.warmup :] if len(segment) > 1] or [np.nan]
        )
        print(f"{name:26}" + "".join(f"{value(s):9.1f}" for s in last) + f"{overall:+14.2f}{within:+9.2f}")
    evaluations = [s for s in samples if s["phase"] == "eval"]
    if evaluations:
        most = max(s["main"]["rss_kib"] for s in evaluations) / 1024
        print(f"main RSS during the evaluations: at most {most:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--segment", type=int, default=1000, help="steps between evaluations")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--warmup", type=int, default=2, help="segments before growth is measured")
    parser.add_argument("--data", choices=("shards", "files"), default="shards")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=200, help="of the shapes world")
    parser.add_argument("--sample-seconds", type=float, default=1.0)
    parser.add_argument("--trim", action="store_true", help="glibc's malloc_trim after each evaluation: tells heap "
                        "pages the allocator keeps from memory in use")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = args.out or Path(tempfile.mkdtemp(prefix="meter-soak-"))
    data = world(out / "world", args.images)
    cfg = config(args, data, out)
    sampler = Sampler(out / "run", args.sample_seconds)
    sampler.start()
    start, resume = time.monotonic(), None
    for end in range(args.segment, args.steps + args.segment, args.segment):
        sampler.phase = "train"
        segment = load_config(None, [f"train.stop_at={min(end, args.steps)}"], base=cfg)
        checkpoint = run_pretrain(segment, resume=resume)
        sampler.phase = "eval"
        scores = evaluate_run(evaluation_config(cfg, out / f"eval_{end}"), checkpoint, out / f"eval_{end}")
        print(f"step {min(end, args.steps)}: zero-shot retrieval R@1 {scores['i2t_r1']:.0f} / {scores['t2i_r1']:.0f}"
              f"{trimmed() if args.trim else ''}", flush=True)  # fmt: skip
        resume = "latest"
    took = time.monotonic() - start
    sampler.stopped.set()
    sampler.join()
    (out / "soak_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sampler.samples))
    report(sampler.samples, args, took)
    print(f"samples: {out / 'soak_samples.jsonl'}")


if __name__ == "__main__":
    main()
