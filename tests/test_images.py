"""data/images: 16-bit images scaled (never clipped), palette masks as indices, truncated and
corrupt files named, colour masks refused with their colours (or mapped by a colour table)."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ocr_tf.data import images
from ocr_tf.errors import MissingFileError

RNG = np.random.default_rng(0)


def _png16_rgb(array, path):
    """A 16-bit RGB PNG written by hand: Pillow cannot write one (it has no 16-bit RGB mode)."""
    h, w, _ = array.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_grey_png_is_scaled_by_its_bit_depth_not_clipped(tmp_path):
    values = RNG.integers(0, 65536, (24, 32)).astype(np.uint16)
    values[0, 0], values[0, 1] = 40000, 300  # clipping would give 255 and 255
    Image.fromarray(values).save(tmp_path / "g16.png")
    rgb = images.read_image(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 32, 3)
    np.testing.assert_array_equal(rgb[..., 0], values // 256)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert rgb[0, 0, 0] == 156 and rgb[0, 1, 0] == 1
    # Conversion stores the same 8-bit pixels and reports the depth.
    encoded = images.encoded_image(tmp_path / "g16.png")
    assert encoded.bit_depth == 16 and encoded.size == (32, 24)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encoded.data)))[..., 1],
                                  values // 256)


def test_16_bit_rgb_png_is_scaled_by_its_bit_depth(tmp_path):
    values = RNG.integers(0, 65536, (24, 32, 3)).astype(np.uint16)
    _png16_rgb(values, tmp_path / "c16.png")
    np.testing.assert_array_equal(images.read_image(tmp_path / "c16.png"), values // 256)
    encoded = images.encoded_image(tmp_path / "c16.png")
    assert encoded.bit_depth == 16  # re-encoded as 8-bit, not stored as the 16-bit file
    assert encoded.data != (tmp_path / "c16.png").read_bytes() and images.png_bit_depth(encoded.data) == 8
    assert encoded.peak == int((values // 256).max())


def test_8_bit_png_and_jpeg_are_stored_byte_for_byte(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    encoded = images.encoded_image(tmp_path / "a.jpg")
    assert encoded.data == (tmp_path / "a.jpg").read_bytes() and encoded.bit_depth == 8


def test_predict_reads_images_through_the_same_reader(tmp_path):
    from ocr_tf import predict

    values = (RNG.integers(0, 65536, (24, 32))).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(predict.read_image(tmp_path / "g16.png")[..., 0], values // 256)


def test_palette_mask_reads_as_indices_not_colours(tmp_path):
    ids = RNG.integers(0, 4, (24, 32)).astype(np.uint8)
    mask = Image.fromarray(ids, mode="P")
    mask.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200])
    mask.save(tmp_path / "p.png")
    np.testing.assert_array_equal(images.read_mask(tmp_path / "p.png"), ids)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_files_are_named(tmp_path, ext):
    Image.fromarray(RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / f"full.{ext}")
    data = (tmp_path / f"full.{ext}").read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
    with pytest.raises(images.ImageReadError, match=rf"cannot read image .*cut\.{ext}: truncated"):
        images.read_image(tmp_path / f"cut.{ext}")
    with pytest.raises(images.ImageReadError, match=rf"cannot read image .*cut\.{ext}"):
        images.encoded_image(tmp_path / f"cut.{ext}")
    with pytest.raises(images.ImageReadError, match=rf"cannot read mask .*cut\.{ext}"):
        images.read_mask(tmp_path / f"cut.{ext}")


def test_not_an_image_and_missing_files_are_named(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(images.ImageReadError, match=r"cannot read image .*notes\.png: not an image"):
        images.read_image(tmp_path / "notes.png")
    with pytest.raises(MissingFileError, match=r"image .*nope\.png does not exist"):
        images.read_image(tmp_path / "nope.png")


def test_colour_mask_is_refused_with_its_colours_or_mapped_by_a_colour_table(tmp_path):
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:6] = (128, 64, 128)  # 25 % of the pixels
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(images.ColourMaskError, match=r"mask .*c\.png is colour-coded.*\(0, 0, 0\) 75\.0%, "
                                                     r"\(128, 64, 128\) 25\.0%") as e:
        images.read_mask(tmp_path / "c.png")
    assert e.value.colours == [((0, 0, 0), 576), ((128, 64, 128), 192)]
    ids = images.read_mask(tmp_path / "c.png", {(0, 0, 0): 0, (128, 64, 128): 1})
    np.testing.assert_array_equal(ids, (rgb[..., 0] == 128).astype(np.uint8))
    with pytest.raises(images.ColourMaskError, match=r"colours not in the class list: \(128, 64, 128\) 25\.0%"):
        images.read_mask(tmp_path / "c.png", {(0, 0, 0): 0})
    # Grey saved as RGB is ids, not colours.
    Image.fromarray(np.repeat(np.full((4, 4, 1), 3, np.uint8), 3, -1)).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(images.read_mask(tmp_path / "grey.png"), np.full((4, 4), 3))


def test_masks_with_ids_above_255_and_float_images_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 300, np.uint16)).save(tmp_path / "m16.png")
    with pytest.raises(images.ImageReadError, match=r"mask .*m16\.png has ids up to 300"):
        images.read_mask(tmp_path / "m16.png")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(images.ImageReadError, match=r"image .*f\.tif holds 32-bit floats"):
        images.read_image(tmp_path / "f.tif")
