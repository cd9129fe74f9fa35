"""ArcFace template alignment and HunyuanPortrait's square crops."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from portraitflow.models.face.align import (
    ARCFACE_TEMPLATE,
    align_arcface,
    arcface_matrix,
    crop_square,
    square_crop_box,
)


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def test_arcface_matrix_maps_keypoints_onto_the_template():
    to_image = _similarity(2.5, 17.0, 140.0, 60.0)
    kps = ARCFACE_TEMPLATE @ to_image[:, :2].T + to_image[:, 2]
    for size in (112, 224):
        matrix = arcface_matrix(kps, size)
        mapped = kps @ matrix[:, :2].T + matrix[:, 2]
        np.testing.assert_allclose(mapped, ARCFACE_TEMPLATE * size / 112, atol=1e-3)


def test_align_arcface_puts_each_keypoint_colour_at_its_template_position():
    to_image = _similarity(3.0, -25.0, 250.0, 120.0)
    kps = ARCFACE_TEMPLATE @ to_image[:, :2].T + to_image[:, 2]
    frame = np.zeros((600, 700, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), colour in zip(kps, colours):
        cv2.circle(frame, (int(round(x)), int(round(y))), 9, colour, -1)
    aligned = align_arcface(frame, kps)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    for (x, y), colour in zip(ARCFACE_TEMPLATE, colours):
        np.testing.assert_array_equal(aligned[int(round(y)), int(round(x))], colour)


def test_align_arcface_rejects_degenerate_keypoints():
    with pytest.raises(ValueError, match="degenerate"):
        align_arcface(np.zeros((50, 50, 3), np.uint8), np.zeros((5, 2)))


def test_square_crop_box_is_three_times_the_face_when_the_image_allows():
    box = square_crop_box(np.array([400.0, 300.0, 500.0, 400.0]), (1000, 1000))
    np.testing.assert_array_equal(box, [300, 200, 600, 500])


def test_square_crop_box_wide_face_box_gives_the_shorter_side_centred():
    # 120 x 80 face box: expanded to 360 x 240; the square is 240 and centred on the face.
    box = square_crop_box(np.array([440.0, 460.0, 560.0, 540.0]), (1000, 1000))
    np.testing.assert_array_equal(box, [380, 380, 620, 620])


def test_square_crop_box_near_a_corner_shifts_toward_the_face_by_at_most_half_the_difference():
    # Expanded and clamped: x [0, 210], y [0, 250]; side 210 centred at y 125; the face centre
    # (y 70) pulls it up by the full slack of 20 px.
    box = square_crop_box(np.array([10.0, 10.0, 110.0, 130.0]), (1000, 800))
    np.testing.assert_array_equal(box, [0, 0, 210, 210])


@pytest.mark.parametrize("image_size", [(512, 512), (720, 1280), (1280, 720), (300, 2000)])
def test_square_crop_box_is_square_inside_the_image_and_contains_the_face(image_size):
    rng = np.random.default_rng(0)
    height, width = image_size
    for _ in range(200):
        side = rng.uniform(20, min(height, width) * 0.6)
        x1, y1 = rng.uniform(0, width - side), rng.uniform(0, height - side)
        face = np.array([x1, y1, x1 + side, y1 + side * rng.uniform(0.8, 1.2)])
        face[3] = min(face[3], height)
        bx1, by1, bx2, by2 = square_crop_box(face, image_size)
        assert bx2 - bx1 == by2 - by1
        assert bx1 >= 0 and by1 >= 0 and bx2 <= width and by2 <= height
        assert bx1 <= face[0] + 1 and by1 <= face[1] + 1 and bx2 >= face[2] - 1 and by2 >= face[3] - 1


def test_square_crop_box_is_exactly_square_for_fractional_face_boxes():
    # Rounding the four corners separately made about a third of these a pixel off square.
    rng = np.random.default_rng(1)
    for _ in range(2000):
        x1, y1 = rng.uniform(300, 900, 2)
        w, h = rng.uniform(20, 190, 2)  # the 3x box stays inside the 1500 x 1500 image
        face = np.array([x1, y1, x1 + w, y1 + h])
        bx1, by1, bx2, by2 = square_crop_box(face, (1500, 1500))
        assert bx2 - bx1 == by2 - by1
        assert abs((bx2 - bx1) - 3 * min(w, h)) <= 1  # nothing clamped here: 3x the shorter side
        assert abs((bx1 + bx2) / 2 - (x1 + w / 2)) <= 1 and abs((by1 + by2) / 2 - (y1 + h / 2)) <= 1


def test_square_crop_box_stays_inside_the_image_when_the_side_rounds_up():
    # Expanded box x [0.4, 100], y [0, 300]: side 99.6 rounds up to 100, which only fits at x 0.
    box = square_crop_box(np.array([33.6, 100.0, 66.8, 200.0]), (300, 100))
    np.testing.assert_array_equal(box, [0, 100, 100, 200])


@pytest.mark.parametrize("size", [256, 512])
def test_crop_square_zero_pads_outside_the_image(size):
    frame = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_square(frame, np.array([50, -50, 150, 50]), size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    half, ring = size // 2, size // 32  # bicubic enlarging blurs the image edge over a few pixels
    assert crop[: half - ring].max() == 0  # above the image
    assert crop[:, half + ring:].max() == 0  # right of the image
    assert (crop[half + ring:, : half - ring] == 200).all()


def test_crop_square_inside_the_image_is_a_plain_resize():
    frame = np.random.default_rng(1).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    crop = crop_square(frame, np.array([100, 50, 356, 306]), 256)
    np.testing.assert_array_equal(crop, frame[50:306, 100:356])


def test_crop_square_rejects_an_empty_box():
    with pytest.raises(ValueError, match="empty"):
        crop_square(np.zeros((10, 10, 3), np.uint8), np.array([5, 5, 5, 9]), 256)
