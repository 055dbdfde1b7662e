"""Small corpora written in their published layouts, for the reader, shard and stream tests."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image


def image_bytes(seed: int, size: tuple[int, int] = (40, 30), kind: str = "JPEG") -> bytes:
    """A small image that differs by seed (a coloured gradient plus noise)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size[0])[None, :, None]
    y = np.linspace(0, 1, size[1])[:, None, None]
    colour = rng.integers(0, 256, 3)[None, None, :]
    pixels = (colour * x + (255 - colour) * y + rng.normal(0, 8, (size[1], size[0], 3))).clip(0, 255)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format=kind)
    return out.getvalue()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def write_coco(root: Path, images: int, captions: int = 5) -> list[int]:
    """annotations/captions_train2014.json, train2014/COCO_train2014_*.jpg and karpathy/dataset_coco.json (image i is
    train, restval, val or test by i % 4). Returns the image ids."""
    ids = list(range(1, images + 1))
    (root / "train2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    entries, annotations = [], []
    for i in ids:
        name = f"COCO_train2014_{i:012d}.jpg"
        (root / "train2014" / name).write_bytes(image_bytes(i))
        texts = [f"image {i} caption {j} of a scene" for j in range(captions)]
        annotations += [{"id": i * 10 + j, "image_id": i, "caption": t} for j, t in enumerate(texts)]
        split = ("train", "restval", "val", "test")[i % 4]
        entries.append({"filepath": "train2014", "filename": name, "cocoid": i, "imgid": i, "split": split,
                        "sentences": [{"raw": t, "tokens": t.split()} for t in texts]})  # fmt: skip
    info = {"images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg"} for i in ids], "annotations": annotations}
    (root / "annotations/captions_train2014.json").write_text(json.dumps(info))
    (root / "karpathy").mkdir()
    (root / "karpathy/dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return ids


def write_visual_genome(root: Path, images: int, regions: int = 3) -> None:
    """region_descriptions.json; images alternate between VG_100K/ and VG_100K_2/."""
    (root / "VG_100K").mkdir(parents=True)
    (root / "VG_100K_2").mkdir()
    entries = []
    for i in range(1, images + 1):
        folder = "VG_100K" if i % 2 else "VG_100K_2"
        (root / folder / f"{i}.jpg").write_bytes(image_bytes(100 + i))
        phrases = [{"region_id": i * 100 + r, "image_id": i, "phrase": f"region {r} of image {i}", "x": r, "y": r,
                    "width": 5, "height": 5} for r in range(regions)]  # fmt: skip
        entries.append({"regions": phrases, "id": i})
    (root / "region_descriptions.json").write_text(json.dumps(entries))


def cc_file(url: str) -> str:
    return str(zlib.crc32(url.encode("utf-8")) & 0xFFFFFFFF)


def write_conceptual_captions(root: Path, rows: int) -> list[str]:
    """Train_GCC-training.tsv (caption<TAB>url) and training/{crc32(url)}; returns the URLs."""
    (root / "training").mkdir(parents=True)
    urls, lines = [], []
    for i in range(rows):
        url = f"http://example.com/photos/{i}/picture.jpg?size=large"
        urls.append(url)
        lines.append(f"a photo number {i} of something\t{url}")
        (root / "training" / cc_file(url)).write_bytes(image_bytes(200 + i))
    (root / "Train_GCC-training.tsv").write_text("\n".join(lines) + "\n")
    return urls


def write_sbu(root: Path, rows: int) -> list[str]:
    (root / "images").mkdir(parents=True)
    urls, captions = [], []
    for i in range(rows):
        url = f"http://static.flickr.com/{1000 + i}/{4000000 + i}_abc{i}.jpg"
        urls.append(url)
        captions.append(f"sbu caption {i} by a user")
        (root / "images" / f"{4000000 + i}_abc{i}.jpg").write_bytes(image_bytes(300 + i))
    (root / "SBU_captioned_photo_dataset_captions.txt").write_text("\n".join(captions) + "\n")
    (root / "SBU_captioned_photo_dataset_urls.txt").write_text("\n".join(urls) + "\n")
    return urls


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset(root: Path, shards: int, per_shard: int, caption_text: str = "web caption") -> list[str]:
    """{00000..}.tar with key.jpg, key.txt, key.json as img2dataset writes them (keys are shard + index, 9 digits),
    plus its per-shard _stats.json. Returns the captions in order ("{caption_text} {shard} {index}")."""
    root.mkdir(parents=True, exist_ok=True)
    captions = []
    for shard in range(shards):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"
                caption = f"{caption_text} {shard} {i}"
                captions.append(caption)
                add_member(tar, f"{key}.jpg", image_bytes(1000 * shard + i))
                add_member(tar, f"{key}.txt", caption.encode())
                meta = {"url": f"http://x/{key}.jpg", "caption": caption, "key": key, "status": "success",
                        "width": 40, "height": 30}  # fmt: skip
                add_member(tar, f"{key}.json", json.dumps(meta).encode())
        (root / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": per_shard}))
    return captions


def write_vilt_arrow(path: Path, rows: list[tuple[bytes, list[str], str]], base64_images: bool = False,
                     batch_rows: int | None = None, split: str | list[str] = "train") -> None:  # fmt: skip
    """An Arrow IPC file like ViLT's write_*.py: columns image, caption, image_id, split (`split`: every row's, or
    one per row)."""
    images = [base64.b64encode(r[0]).decode() if base64_images else r[0] for r in rows]
    table = pa.table({
        "image": pa.array(images, type=pa.string() if base64_images else pa.binary()),
        "caption": pa.array([r[1] for r in rows], type=pa.list_(pa.string())),
        "image_id": pa.array([r[2] for r in rows]),
        "split": pa.array([split] * len(rows) if isinstance(split, str) else split),
    })  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)


def shard_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def corrupt_member_header(path: Path, member: str) -> None:
    """Overwrites the name field of a member's header: its checksum no longer matches, as on a damaged disk."""
    with tarfile.open(path) as tar:
        offset = tar.getmember(member).offset
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(b"\x13garbage" * 12)


DAMAGED = {  # key in write_damaged_shard -> what the reader must say about it (lower case)
    "000000001": "truncated",
    "000000002": "no image member",
    "000000003": "empty caption",
    "000000004": "not utf-8",
    "000000006": "no image member",  # its image's header is corrupt: the member is lost, the sample is not
}


def write_damaged_shard(path: Path) -> list[str]:
    """An img2dataset-style shard of 8 samples, 5 of them bad in the ways of DAMAGED; returns the good keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(8):
            key = f"{i:09d}"
            image = image_bytes(5000 + i, size=(64, 48))
            if key != "000000002":
                add_member(tar, f"{key}.jpg", truncated(image) if key == "000000001" else image)
            caption = {"000000003": b"   ", "000000004": b"caf\xe9 \xff"}.get(key, f"damaged shard {i}".encode())
            add_member(tar, f"{key}.txt", caption)
            add_member(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
    corrupt_member_header(path, "000000006.jpg")
    return [f"{i:09d}" for i in (0, 5, 7)]


def write_latin1_shard(path: Path, names: list[str]) -> list[str]:
    """A shard whose member names are Latin-1 bytes, not UTF-8 (as an old Windows tool writes `café.jpg`): sample i
    is `names[i]`.jpg and .txt. Returns the captions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    captions = [f"latin caption {i}" for i in range(len(names))]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        for i, (name, caption) in enumerate(zip(names, captions, strict=True)):
            add_member(tar, f"{name}.jpg", image_bytes(7000 + i))
            add_member(tar, f"{name}.txt", caption.encode())
    return captions
