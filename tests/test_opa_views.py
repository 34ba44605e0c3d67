"""OPA's view rules (docs/opa.md): score threshold, enlarge + clip, aspect padding, blur inside the box only,
all through the one ViewPolicy that training, test-time OPA and the contact sheet share."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dva.losses import BACKGROUND, DISCRIMINATIVE, ORIGINAL
from dva.opa import Detection, ViewPolicy, background_view
from dva.opa.policy import NOT_LISTED
from dva.opa.views import PAD_FILL, default_blur_kernel


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 255, (height, width, 3), dtype=np.uint8))  # no pure black pixels


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def discriminative_view(image: Image.Image, box, score: float, **policy) -> Image.Image:
    """The discriminative view the policy makes (training's, by default) of ``image`` with ``box``."""
    found = None if box is None else Detection(tuple(map(float, box)), score)
    return ViewPolicy(**policy).views(image, found)[0][DISCRIMINATIVE]


def policy_background(image: Image.Image, box, **policy) -> Image.Image | None:
    views, _ = ViewPolicy(**policy).views(image, Detection(tuple(map(float, box)), 1.0))
    return views.get(BACKGROUND)


@pytest.mark.parametrize("box, score", [(None, 0.9), ((10, 10, 50, 50), 0.49)])
def test_no_box_or_a_low_score_gives_the_original_image(box, score):
    image = noise_image(100, 80)
    assert discriminative_view(image, box, score) is image


def test_score_at_the_threshold_is_trusted():
    image = noise_image(100, 80)
    assert discriminative_view(image, (10, 10, 50, 50), 0.5).size != image.size
    assert discriminative_view(image, (10, 10, 50, 50), 0.3, min_score=0.2).size != image.size


def test_box_is_enlarged_by_ten_percent_about_its_centre():
    image = noise_image(200, 200)
    view = discriminative_view(image, (50, 60, 150, 140), 1.0)  # 100x80, enlarged to 110x88 at (45, 56)
    assert view.size == (110, 88)  # 88/110 = 0.8 >= 3/4: no padding
    assert np.array_equal(pixels(view), pixels(image.crop((45, 56, 155, 144))))


def test_enlarged_box_is_clipped_to_the_image():
    image = noise_image(100, 100)
    view = discriminative_view(image, (0, 10, 100, 90), 1.0)  # enlarged: x -5..105 -> 0..100, y 6..94
    assert view.size == (100, 88)
    assert np.array_equal(pixels(view), pixels(image.crop((0, 6, 100, 94))))


@pytest.mark.parametrize(
    "box, crop_box, size, offset",
    [
        ((40, 20, 60, 180), (39, 12, 61, 188), (132, 176), (55, 0)),  # tall: 22x176 -> width 132 (3:4)
        ((20, 90, 180, 110), (12, 89, 188, 111), (176, 132), (0, 55)),  # wide: 176x22 -> height 132
    ],
)
def test_short_side_is_padded_to_the_aspect_ratio_without_distorting_the_object(box, crop_box, size, offset):
    image = noise_image(200, 200)
    view = discriminative_view(image, box, 0.9)
    assert view.size == size
    short, long = sorted(view.size)
    assert short / long == pytest.approx(3 / 4, abs=0.01)
    # the object's pixels are untouched (not resized), centred, and the rest is padding
    crop = image.crop(crop_box)
    x, y = offset
    assert np.array_equal(pixels(view)[y : y + crop.height, x : x + crop.width], pixels(crop))
    mask = np.ones(view.size[::-1], bool)
    mask[y : y + crop.height, x : x + crop.width] = False
    assert (pixels(view)[mask] == PAD_FILL).all()


def test_other_aspect_ratios_and_square_padding():
    image = noise_image(200, 200)
    assert discriminative_view(image, (40, 20, 60, 180), 0.9, aspect=(1, 1)).size == (176, 176)
    assert discriminative_view(image, (40, 20, 60, 180), 0.9, aspect=(1, 8)).size == (22, 176)  # already 1:8


def test_background_view_blurs_only_inside_the_box():
    image = noise_image(120, 100)
    box = (30, 20, 70, 60)  # 40x40: 13% of the image
    view = background_view(image, box, kernel=3)
    before, after = pixels(image), pixels(view)
    inside = np.zeros(before.shape[:2], bool)
    inside[20:60, 30:70] = True
    assert np.array_equal(after[~inside], before[~inside])
    # a 3x3 mean filter: an interior pixel is the mean of its neighbourhood
    expected = before[39:42, 49:52].reshape(-1, 3).mean(0)
    assert np.abs(after[40, 50] - expected).max() <= 1


def test_blur_reads_the_box_alone():
    """A white background must not bleed into the blurred box (dark noise stays dark)."""
    array = np.full((100, 120, 3), 255, np.uint8)
    array[20:60, 30:70] = np.random.default_rng(0).integers(0, 100, (40, 40, 3))
    view = pixels(background_view(Image.fromarray(array), (30, 20, 70, 60)))
    assert view[20:60, 30:70].max() < 100


def test_default_kernel_scales_with_the_box_and_erases_the_object():
    image = noise_image(200, 200)
    for box in [(50, 50, 90, 90), (20, 20, 140, 110)]:
        assert default_blur_kernel(box) == round(min(box[2] - box[0], box[3] - box[1]) / 2)
        view = background_view(image, box)
        x0, y0, x1, y1 = box
        region_before, region_after = pixels(image)[y0:y1, x0:x1], pixels(view)[y0:y1, x0:x1]
        assert region_after.std() < region_before.std() / 4  # noise smoothed into a smear


def test_no_background_view_when_the_box_covers_half_the_image_or_more():
    image = noise_image(100, 100)
    assert policy_background(image, (0, 0, 50, 100)) is None  # exactly 50%
    assert policy_background(image, (0, 0, 100, 100)) is None
    assert policy_background(image, (0, 0, 49, 100)) is not None  # 49%
    assert policy_background(image, (0, 0, 49, 100), max_area=0.4) is None
    assert policy_background(image, (0, 0, 30, 30), background=False) is None


@pytest.mark.parametrize(
    "found, size, background, expected",
    [
        (NOT_LISTED, None, True, "no_box"),
        (None, None, True, "no_detection"),
        (Detection((0.0, 0.0, 10.0, 10.0), 0.49), None, True, "low_score"),
        (Detection((0.0, 0.0, 50.0, 100.0), 0.5), (100, 100), True, "large_box"),
        (Detection((0.0, 0.0, 49.0, 100.0), 0.5), (100, 100), True, "background"),
        (Detection((0.0, 0.0, 50.0, 100.0), 0.5), None, False, "discriminative"),
    ],
)
def test_policy_outcome_names_what_the_views_will_be(found, size, background, expected):
    policy = ViewPolicy(background=background)
    assert policy.outcome(found, size) == expected
    image = noise_image(100, 100)
    views, outcome = policy.views(image, found)
    assert outcome == expected
    # the original stands in for untrusted boxes; only "background" has all three views
    assert (views[DISCRIMINATIVE] is image) == (expected in ("no_box", "no_detection", "low_score"))
    kinds = {ORIGINAL, DISCRIMINATIVE, BACKGROUND} if expected == "background" else {ORIGINAL, DISCRIMINATIVE}
    assert set(views) == kinds


def test_policy_defaults_are_the_run_configs():
    from dva.config import OPAConfig

    assert ViewPolicy() == ViewPolicy.from_config(OPAConfig())  # defaults written once, in the run config


def test_boxes_outside_the_image_are_refused():
    image = noise_image(50, 50)
    with pytest.raises(ValueError, match="no area inside"):
        discriminative_view(image, (60, 60, 80, 80), 0.9)
    with pytest.raises(ValueError, match="no area inside"):
        background_view(image, (-30, 0, -10, 20))
    with pytest.raises(ValueError, match="area rule needs the image size"):
        ViewPolicy().outcome(Detection((0.0, 0.0, 5.0, 5.0), 0.9))


def test_contact_sheet_shows_every_outcome(tmp_path):
    from dva.opa.box_files import BoxEntry
    from dva.opa.sheet import SheetOptions, contact_sheet, outcome, pick

    path = tmp_path / "a.png"
    noise_image(100, 100).save(path)
    kinds = {
        "background": ((10, 10, 40, 40), 0.9),
        "large_box": ((0, 0, 90, 90), 0.9),
        "low_score": ((10, 10, 40, 40), 0.2),
        "no_detection": (None, 0.0),
    }
    counts = {"background": 20, "large_box": 20, "low_score": 1, "no_detection": 1}  # two rare outcomes
    entries = [BoxEntry(path, *kinds[k], (100, 100), f"{k}:{i}") for k, n in counts.items() for i in range(n)]
    chosen = pick(entries, 8)
    assert [outcome(e) for e in chosen] == ["background"] * 3 + ["large_box"] * 3 + ["low_score", "no_detection"]
    sheet = contact_sheet(chosen[-4:], SheetOptions(tile=50, per_row=2))
    assert sheet.size[0] == 2 * 3 * 50 + 5  # two images (three tiles each) per row, 5 px apart
