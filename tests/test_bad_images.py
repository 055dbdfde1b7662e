"""Images in every PIL mode decode to the pixels a person sees; large ones are reduced while decoding, and one past
the pixel limit (ours, or Pillow's decompression-bomb guard) is a clear per-sample error, refused undecoded."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meter.cli import main
from meter.config import load_config
from meter.data.bad_samples import BadSample
from meter.data.datasets import ImageReader, VqaQuestions
from meter.data.formats.vqa import read_vqa
from meter.data.images import decode_image, image_transform, load_image, to_rgb
from meter.errors import ConfigError, DataError
from meter.predictor import Predictor
from meter.validate import validate

WHITE = (255, 255, 255)


def decoded(path: Path) -> np.ndarray:
    """(H, W, 3) uint8: what meter reads from the file."""
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def grey(values) -> np.ndarray:
    """(H, W, 3) with each value in all three channels."""
    return np.repeat(np.asarray(values, dtype=np.uint8)[..., None], 3, axis=-1)


def saved(image: Image.Image, path: Path, mode: str, **options) -> Path:
    """Writes `image` and checks that PIL reads the file back in `mode`: the mode under test."""
    image.save(path, **options)
    with Image.open(path) as reread:
        assert reread.mode == mode
    return path


SIXTEEN = [[0, 128, 129, 257], [32896, 65280, 65534, 65535]]  # round(v / 257): 0, 0, 1, 1 / 128, 254, 255, 255
SIXTEEN_AS_EIGHT = [[0, 0, 1, 1], [128, 254, 255, 255]]


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped_white(tmp_path: Path):
    path = saved(Image.fromarray(np.array(SIXTEEN, dtype=np.uint16)), tmp_path / "depth.png", "I;16")
    assert np.array_equal(decoded(path), grey(SIXTEEN_AS_EIGHT))


def test_a_big_endian_16_bit_tiff_is_scaled_to_8_bits(tmp_path: Path):
    image = Image.fromarray(np.array(SIXTEEN, dtype=">u2"))
    path = saved(image, tmp_path / "depth.tif", "I;16B")
    assert np.array_equal(decoded(path), grey(SIXTEEN_AS_EIGHT))


def test_32_bit_integer_samples_are_read_as_16_bit_and_clipped_to_its_range(tmp_path: Path):
    values = np.array([[-5, 0, 257, 32896], [65535, 70000, 2**31 - 1, 128]], dtype=np.int32)
    path = saved(Image.fromarray(values), tmp_path / "counts.tif", "I")
    assert np.array_equal(decoded(path), grey([[0, 0, 1, 128], [255, 255, 255, 0]]))


def test_a_16_bit_pgm_which_pil_opens_as_mode_i_keeps_its_brightness(tmp_path: Path):
    path = tmp_path / "scan.pgm"
    path.write_bytes(b"P5 2 1 65535\n" + np.array([514, 65535], dtype=">u2").tobytes())  # 16-bit samples
    with Image.open(path) as image:
        assert image.mode == "I"
    assert np.array_equal(decoded(path), grey([[2, 255]]))


def test_float_samples_are_read_from_0_to_1(tmp_path: Path):
    values = np.array([[-0.5, 0.0, 0.5, 1.0, 2.0, np.nan]], dtype=np.float32)
    path = saved(Image.fromarray(values), tmp_path / "float.tif", "F")
    assert np.array_equal(decoded(path), grey([[0, 0, 128, 255, 255, 0]]))


def palette_image(indices: list[int]) -> Image.Image:
    image = Image.new("P", (len(indices), 1))
    image.putdata(indices)
    image.putpalette([0, 0, 0, 200, 10, 20, 30, 220, 40] + [0] * (253 * 3))
    return image


def test_a_palette_png_reads_its_colours(tmp_path: Path):
    path = saved(palette_image([1, 2, 0]), tmp_path / "palette.png", "P")
    assert decoded(path).tolist() == [[[200, 10, 20], [30, 220, 40], [0, 0, 0]]]


def test_the_transparent_colour_of_a_palette_png_shows_white(tmp_path: Path):
    path = saved(palette_image([1, 2, 0]), tmp_path / "palette.png", "P", transparency=0)
    assert decoded(path).tolist() == [[[200, 10, 20], [30, 220, 40], list(WHITE)]]


def test_a_palette_image_with_alpha_is_composited_on_white(tmp_path: Path):
    image = palette_image([1, 2, 1]).convert("PA")
    image.putalpha(Image.fromarray(np.array([[255, 0, 128]], dtype=np.uint8)))
    path = saved(image, tmp_path / "palette_alpha.tif", "PA")
    expected = [[200, 10, 20], list(WHITE), [round((c * 128 + 255 * 127) / 255) for c in (200, 10, 20)]]
    assert np.abs(decoded(path).astype(int) - np.array([expected])).max() <= 1
    assert decoded(path)[0, :2].tolist() == expected[:2]  # opaque and transparent pixels exactly


def test_rgba_is_composited_on_white_whatever_colour_its_transparent_pixels_store(tmp_path: Path):
    pixels = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [250, 0, 0, 0], [0, 0, 200, 51]]], dtype=np.uint8)
    path = saved(Image.fromarray(pixels), tmp_path / "rgba.png", "RGBA")
    semi = [round((c * 51 + 255 * 204) / 255) for c in (0, 0, 200)]  # 20% opaque blue over white
    result = decoded(path).astype(int)
    assert result[0, :3].tolist() == [[10, 20, 30], list(WHITE), list(WHITE)]
    assert np.abs(result[0, 3] - np.array(semi)).max() <= 1


def test_greyscale_with_alpha_is_composited_on_white(tmp_path: Path):
    pixels = np.array([[[40, 255], [40, 0], [0, 128]]], dtype=np.uint8)
    path = saved(Image.fromarray(pixels, mode="LA"), tmp_path / "la.png", "LA")
    result = decoded(path).astype(int)
    assert result[0, :2].tolist() == [[40] * 3, list(WHITE)]
    assert np.abs(result[0, 2] - 127).max() <= 1  # black at half opacity over white


def test_cmyk_is_converted_by_the_subtractive_formula(tmp_path: Path):
    samples = [(0, 255, 255, 0), (0, 0, 0, 128), (100, 50, 0, 60), (0, 0, 0, 0)]
    image = Image.new("CMYK", (4, 1))
    image.putdata(samples)
    path = saved(image, tmp_path / "print.tif", "CMYK")
    expected = [[round((255 - v) * (255 - k) / 255) for v in (c, m, y)] for c, m, y, k in samples]
    assert np.abs(decoded(path).astype(int) - np.array([expected])).max() <= 1
    assert decoded(path)[0, [0, 3]].tolist() == [[255, 0, 0], list(WHITE)]


def test_ycbcr_is_converted_by_the_jfif_formula(tmp_path: Path):
    samples = [(100, 90, 200), (128, 128, 128), (235, 128, 128)]
    image = Image.new("YCbCr", (3, 1))
    image.putdata(samples)
    path = saved(image, tmp_path / "video.tif", "YCbCr")
    expected = [[y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)]
                for y, cb, cr in samples]  # fmt: skip
    assert np.abs(decoded(path).astype(float) - np.clip(expected, 0, 255)[None]).max() <= 1


def test_greyscale_and_one_bit_images_give_grey_rgb(tmp_path: Path):
    grey_path = saved(Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8)), tmp_path / "grey.png", "L")
    assert np.array_equal(decoded(grey_path), grey([[0, 77, 255]]))
    bits = Image.new("1", (3, 1))
    bits.putdata([1, 0, 1])
    assert np.array_equal(decoded(saved(bits, tmp_path / "bits.png", "1")), grey([[255, 0, 255]]))


def test_rgb_is_read_as_stored(tmp_path: Path):
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13
    assert np.array_equal(decoded(saved(Image.fromarray(pixels), tmp_path / "rgb.png", "RGB")), pixels)


def test_an_image_already_decoded_in_any_mode_is_converted_the_same_way():
    sixteen = Image.fromarray(np.array(SIXTEEN, dtype=np.uint16))
    assert np.array_equal(np.asarray(to_rgb(sixteen)), grey(SIXTEEN_AS_EIGHT))
    reader = ImageReader(lambda image: image, 4)
    assert np.array_equal(np.asarray(reader.decoded(sixteen)), grey(SIXTEEN_AS_EIGHT))  # a caller's (or upload's)


def smooth(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    channels = [255 * x / width, 255 * y / height, 127 + 100 * np.sin(x / 97.0) * np.cos(y / 83.0)]
    return Image.fromarray(np.stack(channels, -1).round().astype(np.uint8))


def test_a_large_png_is_box_reduced_while_staying_twice_the_target_and_transforms_alike(tmp_path: Path):
    path = tmp_path / "large.png"
    smooth(2000, 1400).save(path)
    reduced = load_image(path, at_least=224)
    assert reduced.size == (667, 467)  # by 1400 // (2 * 224) = 3: the short side stays at least 448
    transform = image_transform(224, (0.5,) * 3, (0.5,) * 3)
    difference = (transform(reduced) - transform(load_image(path))).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.1  # in normalised units (2 per full scale)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path: Path):
    path = tmp_path / "photo.jpg"
    smooth(2000, 1500).save(path, quality=90)
    assert load_image(path, at_least=224).size == (1000, 750)  # libjpeg's 1/2 scale: both sides still >= 2 x 224
    assert load_image(path).size == (2000, 1500)


def test_a_jpeg_under_twice_the_size_decodes_whole_as_official_meter_and_an_upload_decode_it(tmp_path: Path):
    """A 1024x768 photo for 384 px was decoded at 1/2 scale by meter predict and evaluate, whole by meter serve and
    the official pipeline: the same file gave other scores (the ranking of two answers changed)."""
    from meter.serve.uploads import read_image

    path = tmp_path / "photo.jpg"
    smooth(1024, 768).save(path, quality=90)
    whole = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(np.asarray(load_image(path, at_least=384)), whole)
    large = tmp_path / "large.jpg"
    smooth(4032, 3024).save(large, quality=90)
    served = read_image(large.read_bytes(), "upload", 10**9, at_least=384)
    assert served.size == (2016, 1512) and np.array_equal(np.asarray(served), np.asarray(load_image(large, 384)))


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels and holds almost none: what a decompression bomb looks like
    before it is decoded (written by hand: PIL would need the pixels in memory to write it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    pixels = zlib.compress(b"\0" * 64)  # a few rows at most: decoding it fails, refusing it must not get there
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("size", "exact"), [((400, 10), True), ((10, 400), True), ((160, 4), True),
                                             ((401, 10), False), ((403, 9), False)])  # fmt: skip
def test_a_very_elongated_image_is_cut_to_its_central_band_before_it_is_resized(size, exact):
    """A 20000x1 PNG (140 bytes, far under the pixel limit) took 9 GB at 384 px: its short side was resized to 384,
    its long side to 7.7 million pixels, before the centre crop kept a square. Cut to its central 16:1 band first,
    the crop is the same square of the image (here, small enough for the whole resize: equal where the cut falls on
    the resized grid, else shifted by under a resized pixel; random pixels are the worst case for that)."""
    from torchvision.transforms import v2

    from meter.data.images import MAX_ASPECT, central_band

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    transform = image_transform(64, (0.5,) * 3, (0.5,) * 3)
    whole = v2.Compose([t for t in transform.transforms if t is not central_band])(image)
    banded = transform(image)
    band = central_band(v2.functional.to_image(image))
    assert MAX_ASPECT * min(band.shape[-2:]) <= max(band.shape[-2:]) <= MAX_ASPECT * min(band.shape[-2:]) + 1
    assert banded.shape == whole.shape == (3, 64, 64)
    difference = (banded - whole).abs()
    assert difference.max() == 0 if exact else difference.mean() < 0.1


@pytest.mark.parametrize("size", [(2000, 3), (3, 2001), (40, 30)])
def test_an_upload_is_cut_to_its_central_band_before_the_model_thread_sees_it(size):
    """`meter serve` decodes uploads in their own threads, and the model's thread runs the transform: a 1 x 39 M
    PNG (under the pixel limit) held the model's thread, and every request queued behind it, for seconds while it
    became a tensor whole. Cut in the upload's thread, it gives the model the same pixels."""
    import io

    from meter.serve.uploads import read_image

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    upload = read_image(buffer.getvalue(), "x.png", max_pixels=10**7, at_least=64)
    assert max(upload.size) <= 16 * min(upload.size) + 1
    transform = image_transform(64, (0.5,) * 3, (0.5,) * 3)
    assert np.array_equal(transform(upload).numpy(), transform(image).numpy())


def test_a_photograph_passes_the_central_band_unchanged():
    import torch

    from meter.data.images import central_band

    photo = torch.zeros(3, 480, 640, dtype=torch.uint8)
    assert central_band(photo) is photo


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path: Path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(12000, 12000))
    message = rf"{path}: 12000x12000 is 144,000,000 pixels, more than data.max_image_pixels = 100,000,000"
    with pytest.raises(DataError, match=message):
        load_image(path, max_pixels=100_000_000)
    with pytest.raises(DataError, match=f"{path}: unreadable image"):  # under the limit: decoding is tried
        load_image(path, max_pixels=200_000_000)


def test_pillows_own_decompression_bomb_guard_is_a_per_sample_error(tmp_path: Path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(20000, 20000))
    with pytest.raises(DataError, match=rf"{path}: too many pixels to decode \(Image size \(400000000 pixels\)"):
        decode_image(path, str(path))


def test_the_configured_limit_makes_a_large_image_a_bad_sample_in_a_dataset(shapes_world: Path, tmp_path: Path):
    cfg = load_config(None, [f"data.root={shapes_world}", "data.max_image_pixels=1000"])
    records = read_vqa(shapes_world / "vqa/v2_OpenEnded_mscoco_val2014_questions.json", None, shapes_world / "images",
                       cfg.vqa.image_pattern, "val2014")[:1]  # fmt: skip
    reader = ImageReader(image_transform(32, (0.5,) * 3, (0.5,) * 3), 32, max_pixels=cfg.data.max_image_pixels)
    sample = VqaQuestions(records, reader)[0]
    assert isinstance(sample, BadSample) and "more than data.max_image_pixels = 1,000" in sample.reason


def test_a_limit_beyond_pillows_guard_or_below_one_is_a_config_error(shapes_world: Path):
    for value in (0, 10**12):
        cfg = load_config(None, [f"data.root={shapes_world}", f"data.max_image_pixels={value}"])
        with pytest.raises(ConfigError, match=rf"data.max_image_pixels = {value} must be in 1\.\.178,956,970"):
            validate(cfg)


def test_predict_refuses_an_image_over_the_limit_by_name(micro_checkpoints, tmp_path: Path, capsys):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(20000, 20000))
    code = main(["predict", "--checkpoint", str(micro_checkpoints("vqa")), "--image", str(path), "--question", "a?"])
    assert code == 2 and f"{path}: too many pixels to decode" in capsys.readouterr().err
    predictor = Predictor(micro_checkpoints("vqa"), "cpu", max_image_pixels=1000)
    small = tmp_path / "small.png"
    smooth(40, 30).save(small)
    with pytest.raises(DataError, match=r"40x30 is 1,200 pixels, more than data.max_image_pixels = 1,000"):
        predictor.answer(small, "what colour?")


def _sideways_photo(tmp_path: Path) -> tuple[Path, Path]:
    """A photo stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view), and the same photo
    stored upright without the tag."""
    upright = Image.new("RGB", (120, 80), (200, 30, 30))
    upright.paste((30, 30, 200), (0, 0, 60, 80))  # left half blue: the orientation shows
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a phone held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = tmp_path / "sideways.png"
    stored.save(sideways, exif=exif)
    plain = tmp_path / "upright.png"
    upright.save(plain)
    return sideways, plain


def test_predicting_turns_a_photo_as_its_exif_says_and_evaluating_reads_it_as_stored(micro_checkpoints, tmp_path):
    """The browser shows an upload upright; the model saw it sideways and answered about another view. Datasets keep
    the stored pixels, as the official pipeline read them."""
    from meter.serve.uploads import read_image

    sideways, plain = _sideways_photo(tmp_path)
    assert np.array_equal(np.asarray(load_image(sideways, upright=True)), np.asarray(load_image(plain)))
    served = read_image(sideways.read_bytes(), "upload", 10**9, at_least=64)
    assert np.array_equal(np.asarray(served), np.asarray(load_image(plain)))
    predictor = Predictor(micro_checkpoints("vqa"), "cpu")
    assert predictor.pixels(sideways).equal(predictor.pixels(plain))
    evaluated = ImageReader(image_transform(64, (0.5,) * 3, (0.5,) * 3), 64)
    assert not evaluated(sideways).equal(evaluated(plain)), "training and evaluation read the stored pixels"
