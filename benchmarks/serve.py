"""VQA through `meter serve` against the same model called directly in Python, on the CPU: requests per second and
latency percentiles, one request at a time and many at once (which the server batches).

    python benchmarks/serve.py [--model runs/demo/vqa-model/model] [--world runs/demo/shapes] [--requests 200]
                               [--concurrency 16] [--max-batch 16] [--max-wait-ms 5]

Rows, each over the same shapes-world (image, question) pairs:
- direct, one by one: `Predictor.answer` per question (the images already decoded: the model's cost alone);
- direct, batched: `Predictor.answer_batch` in batches of --max-batch (what batching can reach at best);
- served, one by one: one client, each request sent when the last is answered (HTTP, upload, decoding, queue);
- served, concurrent: --concurrency clients at once; the server batches what arrives together.
The server runs as `meter serve` in its own process; the client in this one. Ratios are against direct one by one.
The model gets --threads torch threads (default 1) in both; the rows take turns for --rounds rounds, and each row
shows its median round (other load on a shared machine comes and goes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from meter.data.images import load_image
from meter.predictor import Predictor


def workload(world: Path, count: int) -> list[tuple[Path, str]]:
    questions = json.loads((world / "vqa/v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    pairs = [(world / f"images/val2014/COCO_val2014_{q['image_id']:012d}.png", q["question"]) for q in questions]
    return [pairs[i % len(pairs)] for i in range(count)]


def stats(latencies: list[float], seconds: float, batch_sizes: list[int] | None = None) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    row = {"requests_per_s": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
           "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99))}  # fmt: skip
    if batch_sizes:
        row["mean_batch"] = float(np.mean(batch_sizes))
    return row


def direct(predictor: Predictor, work: list[tuple[Path, str]], batch: int) -> dict[str, dict[str, float]]:
    images = {path: load_image(path) for path, _ in work}
    for path, question in work[:5]:  # warm-up
        predictor.answer(images[path], question)
    latencies, start = [], time.perf_counter()
    for path, question in work:
        t = time.perf_counter()
        predictor.answer(images[path], question)
        latencies.append(time.perf_counter() - t)
    one = stats(latencies, time.perf_counter() - start)
    latencies, start = [], time.perf_counter()
    for i in range(0, len(work), batch):
        chunk = work[i : i + batch]
        t = time.perf_counter()
        predictor.answer_batch([images[p] for p, _ in chunk], [q for _, q in chunk])
        latencies += [time.perf_counter() - t] * len(chunk)  # each waits for its whole batch
    return {"direct, one by one": one, "direct, batched": stats(latencies, time.perf_counter() - start)}


async def served(url: str, work: list[tuple[Path, str]], concurrency: int) -> dict[str, float]:
    uploads = {path: path.read_bytes() for path, _ in work}
    latencies: list[float] = []
    batch_sizes: list[int] = []
    queue = list(reversed(work))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            path, question = queue.pop()
            t = time.perf_counter()
            response = await http.post("/api/vqa", files={"image": (path.name, uploads[path], "image/png")},
                                       data={"question": question})  # fmt: skip
            response.raise_for_status()
            latencies.append(time.perf_counter() - t)
            batch_sizes.append(response.json()["batch"]["size"])

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        for path, question in work[:5]:  # warm-up
            files = {"image": (path.name, uploads[path], "image/png")}
            (await http.post("/api/vqa", files=files, data={"question": question})).raise_for_status()
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return stats(latencies, time.perf_counter() - start, batch_sizes)


def start_server(model: str, max_batch: int, max_wait_ms: float, max_pending: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limits = ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-pending", str(max_pending)]
    command = [
        sys.executable,
        "-m",
        "meter",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--device",
        "cpu",
        *limits,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"meter serve stopped: {process.stderr.read()}")
        try:
            httpx.get(f"{url}/health", timeout=2).raise_for_status()
            return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("meter serve did not start within 300 s")


def median_round(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per row, the round with the median requests/s (this machine's other load comes and goes)."""
    return {
        name: sorted((r[name] for r in rounds), key=lambda row: row["requests_per_s"])[len(rounds) // 2]
        for name in rounds[0]
    }


def print_table(rows: dict[str, dict[str, float]]) -> None:
    base = rows["direct, one by one"]["requests_per_s"]
    print("| | requests/s | p50 ms | p90 ms | p99 ms | mean batch | vs direct one by one |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        batch = f"{row['mean_batch']:.1f}" if "mean_batch" in row else ""
        cells = [f"{row[k]:.1f}" for k in ("requests_per_s", "p50_ms", "p90_ms", "p99_ms")]
        print(f"| {name} | {' | '.join(cells)} | {batch} | {row['requests_per_s'] / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/vqa-model/model")
    parser.add_argument("--world", default="runs/demo/shapes")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="each row is measured this often; the median is shown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model, direct and served alike")
    parser.add_argument("--out", default="runs/benchmarks/serve.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the same thread count for both (the served model's process reads it at start); on 2 cores one thread each
    # for the model and the client is also what keeps a small model from losing its time to thread contention
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)

    work = workload(Path(args.world), args.requests)
    predictor = Predictor(args.model, "cpu")
    process, url = start_server(args.model, args.max_batch, args.max_wait_ms, max(64, 2 * args.concurrency))
    rounds = []
    try:
        for _ in range(args.rounds):  # the rows take turns, so that a burst of other load does not hit one alone
            rows = direct(predictor, work, args.max_batch)
            rows["served, one by one"] = asyncio.run(served(url, work, 1))
            rows[f"served, {args.concurrency} concurrent"] = asyncio.run(served(url, work, args.concurrency))
            rounds.append(rows)
    finally:
        process.terminate()
        process.wait(timeout=30)

    rows = median_round(rounds)
    print(f"VQA, {args.requests} requests x {args.rounds} rounds (median shown), {args.model}, CPU"
          f" ({torch.get_num_threads()} threads), torch {torch.__version__}; the server batches up to"
          f" {args.max_batch} and waits {args.max_wait_ms:g} ms\n")  # fmt: skip
    print_table(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
