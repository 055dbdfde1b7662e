"""SBU Captioned Photo Dataset as published: `SBU_captioned_photo_dataset_captions.txt` and
`SBU_captioned_photo_dataset_urls.txt` (line i of one belongs to line i of the other), and the images in a folder.

Images are found by the last part of their URL (`.../2723/4385058960_b0f291553e.jpg` -> `images/4385058960_b0f29
1553e.jpg`), the name `wget -i SBU_captioned_photo_dataset_urls.txt -P images` gives them. URLs without a file
are counted as not downloaded, not as bad data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from meter.data.formats.common import RawSample, Unusable, caption_sample, text_lines
from meter.data.formats.conceptual_captions import count_lines
from meter.errors import DataError

CAPTIONS = "SBU_captioned_photo_dataset_captions.txt"
URLS = "SBU_captioned_photo_dataset_urls.txt"
IMAGES = "images"


def url_basename(url: str) -> str:
    return Path(urlparse(url).path).name


class SbuSource:
    name = "sbu"
    missing_images_expected = True

    def __init__(self, root: str | Path, captions: str = CAPTIONS, urls: str = URLS, images: str = IMAGES) -> None:
        self.root = Path(root)
        self.captions, self.urls, self.images = self.root / captions, self.root / urls, self.root / images
        if not self.images.is_dir():
            raise DataError(f"SBU image folder not found: {self.images}")
        self.lines = count_lines(self.captions)
        if count_lines(self.urls) != self.lines:
            raise DataError(f"{self.captions} and {self.urls} must have one line per photo each; their counts differ")
        self.description = {"root": str(self.root), "captions": captions, "urls": urls, "images": images}
        self.files = (self.captions, self.urls)

    def __len__(self) -> int:
        return self.lines

    def samples(self, start: int = 0) -> Iterator[RawSample | Unusable]:
        lines = zip(text_lines(self.captions, "SBU captions", start), text_lines(self.urls, "SBU urls", start),
                    strict=True)  # fmt: skip
        for (row, name, caption), (_, _, url) in lines:
            if isinstance(caption, Unusable):
                yield caption
                continue
            url = url.strip() if isinstance(url, str) else ""
            if not url_basename(url):
                yield Unusable(name, f"{self.urls}:{row + 1}: not an image URL")
                continue
            image = self.images / url_basename(url)
            yield caption_sample(f"{row:07d}", image, [caption], name, {"url": url, "row": row})
