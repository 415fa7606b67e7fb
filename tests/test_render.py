import numpy as np
import pytest

from hpe_ray import camera, skeleton
from hpe_ray.data.render import crop_box_around, render_person

INTRINSICS = camera.Intrinsics(np.array([1000.0, 1000.0]), np.array([500.0, 500.0]), np.zeros(3), np.zeros(2),
                               (1000, 1000))
SIZE = 128

# A person 4 m in front of the camera, facing it, arms out (camera frame: x right, y down):
# their left side is on the image's right.
T_POSE_MM = np.array([
    [0, 0, 0], [-130, 0, 0], [-130, 440, 0], [-130, 880, 0], [130, 0, 0], [130, 440, 0], [130, 880, 0],
    [0, -230, 0], [0, -480, 0], [0, -590, -40], [0, -700, 0],
    [150, -470, 0], [420, -470, 0], [660, -470, 0], [-150, -470, 0], [-420, -470, 0], [-660, -470, 0],
], dtype=float) + [0, 0, 4000]
BOX = crop_box_around(camera.project_to_pixels(T_POSE_MM, INTRINSICS))


def _render(pose_mm, box=BOX, seed=7):
    return render_person(pose_mm, INTRINSICS, box, SIZE, np.random.default_rng(seed))


def _crop_pixel(point_mm):
    """(row, col) of the crop pixel where a camera-frame point lands."""
    uv = camera.project_to_pixels(np.asarray(point_mm, float)[None], INTRINSICS)[0]
    col, row = ((uv - BOX[:2]) * SIZE / (BOX[2:] - BOX[:2])).astype(int)
    return row, col


def test_crop_box_hand_computed():
    keypoints = np.array([[100.0, 200.0], [300.0, 600.0], [150.0, 400.0]])
    # bounding box 200 x 400 around (200, 400); side 400 * (1 + 2 * 0.15) = 520
    np.testing.assert_allclose(crop_box_around(keypoints, margin=0.15), [-60, 140, 460, 660])
    assert crop_box_around(keypoints).dtype == np.float32
    np.testing.assert_allclose(crop_box_around(np.array([[5.0, 5.0]]), margin=0.5), [-3, -3, 13, 13])


def test_crop_box_rejects_bad_keypoints():
    with pytest.raises(ValueError, match="crop_box_around"):
        crop_box_around(np.array([[np.nan, 1.0], [2.0, 3.0]]))


def test_render_shape_dtype_determinism():
    image = _render(T_POSE_MM)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    np.testing.assert_array_equal(image, _render(T_POSE_MM))
    assert not np.array_equal(image, _render(T_POSE_MM, seed=8))
    assert image.std() > 10


def test_person_is_drawn_where_the_joints_project():
    image = _render(T_POSE_MM).astype(int)
    background = _render(T_POSE_MM, box=BOX + 10_000).astype(int)  # same draws, person out of the crop
    for parent, child in skeleton.BONES:
        row, col = _crop_pixel((T_POSE_MM[parent] + T_POSE_MM[child]) / 2)
        assert np.abs(image[row, col] - background[row, col]).sum() > 30, (parent, child)
    assert np.array_equal(image[:3, :3], background[:3, :3])  # corners stay background


def test_left_limbs_cool_right_limbs_warm():
    image = _render(T_POSE_MM).astype(int)
    for left, right in ((12, 15), (13, 16), (5, 2), (6, 3)):
        r, g, b = image[_crop_pixel((T_POSE_MM[left] + T_POSE_MM[left - 1]) / 2)]
        assert b > r + 40
        r, g, b = image[_crop_pixel((T_POSE_MM[right] + T_POSE_MM[right - 1]) / 2)]
        assert r > b + 40


def test_nearer_limbs_hide_farther_ones():
    in_front = T_POSE_MM.copy()  # left forearm across the belly, in front of the torso
    in_front[12] = [200, -150, 3750]
    in_front[13] = [-200, -150, 3700]
    behind = in_front.copy()  # same 2D, pushed along the rays behind the torso
    behind[12:14] *= 4500 / 3725
    away = T_POSE_MM  # forearm elsewhere
    pixel = _crop_pixel((in_front[12] + in_front[13]) / 2)
    np.testing.assert_array_equal(_crop_pixel((behind[12] + behind[13]) / 2), pixel)
    front_rgb, behind_rgb, away_rgb = (_render(p)[pixel].astype(int) for p in (in_front, behind, away))
    assert front_rgb[2] > front_rgb[0] + 40  # the (left, blue) forearm shows
    np.testing.assert_array_equal(behind_rgb, away_rgb)  # the torso hides it completely


def test_a_limb_through_the_torso_shows_only_where_it_is_nearer():
    piercing = T_POSE_MM.copy()  # left forearm from 500 mm before the belly to 700 mm behind it
    piercing[12] = [160, -150, 3500]
    piercing[13] = [-160, -150, 4700]
    away = T_POSE_MM
    near_end = _crop_pixel(piercing[12] + (piercing[13] - piercing[12]) * 0.3)  # torso front at ~3880 mm
    far_end = _crop_pixel(piercing[12] + (piercing[13] - piercing[12]) * 0.7)
    pierced, torso = _render(piercing).astype(int), _render(away).astype(int)
    assert pierced[near_end][2] > pierced[near_end][0] + 40  # the (left, blue) forearm shows
    assert not np.array_equal(pierced[near_end], torso[near_end])
    np.testing.assert_array_equal(pierced[far_end], torso[far_end])


def test_limb_width_follows_depth():
    background = _render(T_POSE_MM, box=BOX + 10_000)
    near = (_render(T_POSE_MM) != background).any(axis=2).sum()
    farther = T_POSE_MM * 2  # same projection, twice as far: limbs half as wide
    far = (_render(farther) != background).any(axis=2).sum()
    assert 0.4 * near < far < 0.75 * near


def test_render_rejects_bad_input():
    behind_camera = T_POSE_MM - [0, 0, 5000]
    with pytest.raises(ValueError, match="in front of the camera"):
        _render(behind_camera)
    with pytest.raises(ValueError, match="crop box"):
        _render(T_POSE_MM, box=np.array([10.0, 10.0, 5.0, 20.0]))
