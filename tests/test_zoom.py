"""Zoom-out of the original training view (docs/opa.md): geometry, the per-sample draw, the
dataset (only the original view changes, nothing else moves), and its settings."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from dva.config import RunConfig, TrainConfig, from_dict, identity_dict, parse_assignments, resumable_fields
from dva.data.loaders import TrainDataset, Views
from dva.data.records import ImageRecord
from dva.data.transforms import train_transform
from dva.data.zoom import BLUR, ZoomOutAugment, zoom_out
from dva.errors import ConfigError
from dva.train.trainer import zoom_augment
from dva.view_kinds import DISCRIMINATIVE, ORIGINAL

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMG = 32


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels: any misplaced, mis-scaled or blurred paste shows."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("size", "scale", "position"),
    [
        ((60, 40), 0.5, (0.25, 1.0)),
        ((41, 77), 0.35, (0.0, 0.0)),
        ((50, 50), 0.75, (1.0, 0.5)),
        ((33, 20), 1.0, (0.3, 0.3)),
    ],
)
def test_zoom_out_pastes_the_shrunk_photo_on_its_own_blurred_copy(size, scale, position):
    photo = noise(*size)
    width, height = size
    image, box = zoom_out(photo, scale, position, blur=0.08)
    assert image.size == photo.size and image.mode == "RGB"
    x0, y0, x1, y1 = box
    assert all(isinstance(v, float) for v in box)
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert abs((x1 - x0) - scale * width) <= 1 and abs((y1 - y0) - scale * height) <= 1
    # the position is a fraction of the free room
    assert abs(x0 - position[0] * (width - (x1 - x0))) <= 0.5 and abs(y0 - position[1] * (height - (y1 - y0))) <= 0.5
    got = np.asarray(image)
    ix0, iy0, ix1, iy1 = (int(v) for v in box)
    small = photo.resize((ix1 - ix0, iy1 - iy0), Image.Resampling.LANCZOS)
    assert np.array_equal(got[iy0:iy1, ix0:ix1], np.asarray(small))
    canvas = np.asarray(photo.filter(ImageFilter.GaussianBlur(0.08 * min(size))))
    outside = np.ones((height, width), dtype=bool)
    outside[iy0:iy1, ix0:ix1] = False
    assert np.array_equal(got[outside], canvas[outside])
    again, again_box = zoom_out(photo, scale, position, blur=0.08)
    assert again_box == box and again.tobytes() == image.tobytes()


def test_the_canvas_is_strongly_blurred_not_the_photo():
    photo = noise(64, 48)
    image, (x0, y0, x1, y1) = zoom_out(photo, 0.4, (0.0, 0.0))
    corner = np.asarray(image)[int(y1) :, int(x1) :].astype(float)
    assert corner.std() < 0.25 * np.asarray(photo).astype(float).std()  # no detail left in the canvas
    assert BLUR == 0.08


@pytest.mark.parametrize(("scale", "position"), [(0.0, (0.5, 0.5)), (1.2, (0.5, 0.5)), (0.5, (1.5, 0.0))])
def test_zoom_out_refuses_what_cannot_be_pasted(scale, position):
    with pytest.raises(ValueError, match="zoom-out"):
        zoom_out(noise(20, 20), scale, position)


def test_the_draw_is_a_function_of_the_sample_seed():
    augment = ZoomOutAugment(0.5, (0.35, 0.75))
    draws = [augment.draw(seed) for seed in range(400)]
    assert draws == [augment.draw(seed) for seed in range(400)]  # the same seed, the same zoom
    zoomed = [d for d in draws if d is not None]
    assert 150 < len(zoomed) < 250  # about half
    assert len({d[0] for d in zoomed}) == len(zoomed)  # different seeds, different zooms
    assert all(0.35 <= scale <= 0.75 and all(0 <= p <= 1 for p in pos) for scale, pos in zoomed)
    assert all(ZoomOutAugment(0.0, (0.35, 0.75)).draw(s) is None for s in range(100))
    assert all(ZoomOutAugment(1.0, (0.35, 0.75)).draw(s) is not None for s in range(100))
    with pytest.raises(ValueError, match="probability"):
        ZoomOutAugment(1.5, (0.35, 0.75))
    with pytest.raises(ValueError, match="scale range"):
        ZoomOutAugment(0.5, (0.8, 0.5))


def two_views(image: Image.Image, record: ImageRecord) -> Views:
    """A view maker like OPA's: the original and a crop of the un-zoomed photo (module level: picklable)."""
    return Views({ORIGINAL: image, DISCRIMINATIVE: image.crop((5, 5, 45, 35))})


@pytest.fixture
def records(tmp_path: Path) -> list[ImageRecord]:
    out = []
    for i, size in enumerate([(64, 48), (50, 70), (80, 40)]):
        path = tmp_path / f"{i}.png"
        noise(*size, seed=i).save(path)
        out.append(ImageRecord(path, label=i, image_id=str(i)))
    return out


def dataset(records: list[ImageRecord], zoom: ZoomOutAugment | None) -> TrainDataset:
    return TrainDataset(records, train_transform(IMG, MEAN, STD), two_views, zoom=zoom)


def plain_sample(records: list[ImageRecord], index: int, seed: int, original: Image.Image | None = None):
    """What the dataset computed before zoom-out existed: every view transformed under the sample's seed."""
    image = Image.open(records[index].path).convert("RGB")
    views = two_views(image, records[index]).images
    if original is not None:
        views[ORIGINAL] = original
    transform = train_transform(IMG, MEAN, STD)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {kind: transform(img) for kind, img in views.items()}


def test_zoom_off_gives_the_samples_of_before(records):
    for zoom in (None, ZoomOutAugment(0.0, (0.35, 0.75))):
        data = dataset(records, zoom)
        for index, seed in [(0, 11), (1, 12), (2, 13)]:
            sample, expected = data[index, seed], plain_sample(records, index, seed)
            assert sample.views.keys() == expected.keys()
            for kind in expected:
                assert torch.equal(sample.views[kind], expected[kind]), (zoom, index, kind)


def test_zoom_changes_the_original_view_only(records):
    off, on = dataset(records, ZoomOutAugment(0.0, (0.35, 0.75))), dataset(records, ZoomOutAugment(1.0, (0.35, 0.75)))
    for index, seed in [(0, 21), (1, 22), (2, 23)]:
        plain, zoomed = off[index, seed], on[index, seed]
        assert torch.equal(plain.views[DISCRIMINATIVE], zoomed.views[DISCRIMINATIVE])
        assert not torch.equal(plain.views[ORIGINAL], zoomed.views[ORIGINAL])
        assert zoomed.labels == plain.labels
        # the zoom the seed draws, then the same crop and flip as without it
        scale, position = on.zoom.draw(seed)  # type: ignore[union-attr, misc]
        image = Image.open(records[index].path).convert("RGB")
        expected = plain_sample(records, index, seed, original=zoom_out(image, scale, position)[0])
        assert torch.equal(zoomed.views[ORIGINAL], expected[ORIGINAL])
        again = on[index, seed]
        assert torch.equal(again.views[ORIGINAL], zoomed.views[ORIGINAL])
    assert not torch.equal(on[0, 21].views[ORIGINAL], on[0, 31].views[ORIGINAL])


def test_a_zooming_dataset_pickles_for_dataloader_workers(records):
    data = dataset(records, ZoomOutAugment(1.0, (0.35, 0.75)))
    copy = pickle.loads(pickle.dumps(data))
    assert copy.zoom == data.zoom
    assert torch.equal(copy[1, 5].views[ORIGINAL], data[1, 5].views[ORIGINAL])


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"zoom_out": 1.5}, "train.zoom_out"),
        ({"zoom_out": -0.1}, "train.zoom_out"),
        ({"zoom_scale": [0.8, 0.5]}, "train.zoom_scale"),
        ({"zoom_scale": [0.0, 0.5]}, "train.zoom_scale"),
        ({"zoom_scale": [0.5, 1.2]}, "train.zoom_scale"),
    ],
)
def test_zoom_settings_are_checked_naming_the_field(values, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        from_dict(TrainConfig, values, where="train")


def test_the_config_and_the_augmentation_refuse_zoom_settings_with_one_check():
    # dva.config.check_zoom is the one home: the config says it as its ConfigError, the same words
    for probability, scale in [(1.5, (0.35, 0.75)), (0.5, (0.8, 0.5))]:
        with pytest.raises(ValueError) as direct:
            ZoomOutAugment(probability, scale)
        with pytest.raises(ConfigError) as configured:
            TrainConfig(zoom_out=probability, zoom_scale=scale)
        assert str(direct.value) == str(configured.value)


def test_zoom_is_set_from_the_command_line_and_is_identity_only_when_set(tmp_path):
    from dva.cli.train import build_config, config_overrides

    config = build_config(
        tmp_path / "r", parse_assignments(["train.zoom_out=0.5", "train.zoom_scale=[0.4, 0.6]"]), None, False
    )
    assert config.train.zoom_out == 0.5 and config.train.zoom_scale == (0.4, 0.6)
    assert zoom_augment(config.train) == ZoomOutAugment(0.5, (0.4, 0.6))
    assert zoom_augment(TrainConfig()) is None  # off: the paper's recipe, nothing changes
    changed = TrainConfig()
    changed.zoom_out = 2.0  # set after the config was built
    with pytest.raises(ConfigError, match=r"train\.zoom_out"):
        zoom_augment(changed)
    assert config_overrides({"zoom_out": 0.25})["train"] == {"zoom_out": 0.25}  # dva train --zoom-out
    # left out of the identity at their defaults (finished runs keep their names), in it when set
    assert "zoom_out" not in identity_dict(RunConfig())["train"]
    assert "zoom_scale" not in identity_dict(RunConfig())["train"]
    assert identity_dict(config)["train"]["zoom_out"] == 0.5
    assert identity_dict(config)["train"]["zoom_scale"] == [0.4, 0.6]
    assert not {"train.zoom_out", "train.zoom_scale"} & resumable_fields()  # they change the result
