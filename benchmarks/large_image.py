"""Peak memory of reading one very large image for the model: meter's decode (box-reduced right after decoding,
JPEGs decoded at a reduced scale) against decoding it whole and converting, as the code before issue 15 did.
Linux only (reads and resets the peak resident set size through /proc).

    python benchmarks/large_image.py [--side 12000] [--image-size 224] [--format png]

Writes a side x side RGB image (smooth gradients with a little noise, so that it compresses like a photo, not
like a flat colour), then reads it in a fresh process per method, through the model's transform (bicubic resize of
the short side, centre crop, normalise), and prints each method's peak memory above the process's memory before
the read, its time, and the ratio of meter's peak to the whole decode's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

METHODS = ("whole", "meter")


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def current_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def measure(method: str, path: Path, image_size: int) -> dict[str, float]:
    """Runs in its own process: the transform's output for `path`, read by `method`; memory in MiB."""
    import torch  # noqa: F401 (imported before the baseline: its memory is not the read's)

    from meter.data.images import image_transform, load_image

    transform = image_transform(image_size, (0.5,) * 3, (0.5,) * 3)
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far (imports) is forgotten: VmHWM = VmRSS
    before = current_kib()
    start = time.perf_counter()
    if method == "whole":
        with Image.open(path) as image:
            pixels = transform(image.convert("RGB"))
    else:
        pixels = transform(load_image(path, at_least=image_size))
    seconds = time.perf_counter() - start
    assert tuple(pixels.shape) == (3, image_size, image_size)
    return {"peak_mib": (peak_kib() - before) / 1024, "seconds": seconds}


def write_image(path: Path, side: int, image_format: str) -> None:
    rows = np.linspace(0, 255, side, dtype=np.float32)
    noise = np.random.default_rng(0).integers(0, 8, (side, side), dtype=np.uint8)
    image = np.empty((side, side, 3), dtype=np.uint8)
    image[..., 0] = rows[None, :].astype(np.uint8) + noise
    image[..., 1] = rows[:, None].astype(np.uint8)
    image[..., 2] = 128
    options = {"compress_level": 1} if image_format == "png" else {"quality": 90}
    Image.fromarray(image).save(path, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=12000, help="the image's width and height")
    parser.add_argument("--image-size", type=int, default=224, help="the model's input size")
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    parser.add_argument("--measure", choices=METHODS, help=argparse.SUPPRESS)  # the child process's job
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.path, args.image_size)))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"large.{args.format}"
        start = time.perf_counter()
        write_image(path, args.side, args.format)
        print(f"{args.side}x{args.side} {args.format.upper()}: {path.stat().st_size / 2**20:.1f} MiB on disk, "
              f"written in {time.perf_counter() - start:.1f} s; model input {args.image_size} px")  # fmt: skip
        results = {}
        for method in METHODS:
            command = [sys.executable, __file__, "--measure", method, "--path", str(path),
                       "--image-size", str(args.image_size)]  # fmt: skip
            results[method] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            print(f"{method:>6}: peak {results[method]['peak_mib']:7.0f} MiB, {results[method]['seconds']:5.2f} s")
        ratio = results["meter"]["peak_mib"] / results["whole"]["peak_mib"]
        speed = results["whole"]["seconds"] / results["meter"]["seconds"]
        print(f"meter / whole: {ratio:.2f}x the peak memory, {speed:.2f}x as fast")


if __name__ == "__main__":
    main()
