"""Figures: the pure helpers on hand values, and every figure rendered from the tiny model of
test_predict.py (files exist, have the expected size, are not blank); the animation of a
`hpe-ray predict` .npz, written as GIF and MP4 and decoded again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from hpe_ray import figures, plotting
from hpe_ray.camera import Intrinsics, project_to_pixels
from hpe_ray.cli import main
from hpe_ray.data.stream import load_pose_arrays
from hpe_ray.inference import predict_file


def _assert_drawn(path: Path, size_px: tuple[int, int] | None = None) -> None:
    """The PNG exists, has the given (width, height), and is not a blank page."""
    assert path.is_file()
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    if size_px is not None:
        assert (pixels.shape[1], pixels.shape[0]) == size_px
    assert pixels.std() > 15.0
    assert (pixels.min(axis=-1) < 200).mean() > 0.01  # at least 1 % of the page is not near white


def _poses(count: int, seed: int = 0) -> np.ndarray:
    """(count, 17, 3) root-relative poses: a jittered standing body, camera mm (y down)."""
    rng = np.random.default_rng(seed)
    body = np.array([[0, 0, 0], [-130, 0, 0], [-140, 450, 20], [-140, 880, 60], [130, 0, 0], [140, 450, 20],
                     [140, 880, 60], [0, -230, 0], [0, -480, 10], [0, -580, -40], [0, -700, 0], [170, -450, 0],
                     [200, -180, 30], [210, 60, 60], [-170, -450, 0], [-200, -180, 30], [-210, 60, 60]], float)
    poses = body + rng.normal(0, 40, (count, 17, 3))
    return poses - poses[:, :1]


# ---------------------------------------------------------------- helpers

def test_camera_to_display_puts_height_up_and_depth_away():
    # Camera: x right, y down, z forward -> display: x, depth (z), up (-y).
    np.testing.assert_array_equal(plotting.camera_to_display(np.array([1.0, 2.0, 3.0])), [1.0, 3.0, -2.0])


def test_umap_neighbors_are_clipped_to_the_points_and_deduplicated():
    assert plotting.umap_neighbors((5, 15, 50, 200), 30) == [5, 15, 29]
    assert plotting.umap_neighbors((5, 15), 1000) == [5, 15]
    assert plotting.umap_neighbors((1,), 10) == [2]  # UMAP needs at least 2 neighbours


def test_pick_samples_shows_every_action_before_repeating_one():
    actions = np.array(["Walking"] * 10 + ["Sitting"] * 3 + ["Eating"] * 1)
    chosen = figures.pick_samples(actions, 5, seed=1)
    assert sorted(actions[chosen].tolist()) == ["Eating", "Sitting", "Sitting", "Walking", "Walking"]
    assert len(set(chosen.tolist())) == 5
    assert len(figures.pick_samples(actions, 100)) == 14  # never more than there are


def test_error_tables_hand_values():
    gt = _poses(3)
    pred = gt.copy()
    pred[:, 5, 0] += 34.0  # left knee 34 mm off in every sample
    pred[2] *= 2.0        # sample 2 is twice as big: PA-MPJPE removes scale
    per_joint_mm, tables = plotting.error_tables(pred, gt, ["Walking", "Walking", "Sitting"])
    assert per_joint_mm[5] == pytest.approx(np.mean([34.0, 34.0, np.linalg.norm(2 * gt[2, 5] + [68, 0, 0] - gt[2, 5])]))
    assert per_joint_mm[0] == 0.0
    assert tables["MPJPE (P1)"]["Walking"] == pytest.approx(2.0)  # 34 mm on one joint of 17
    assert tables["MPJPE (P1)"]["Average"] == pytest.approx(
        (2.0 + tables["MPJPE (P1)"]["Sitting"]) / 2)                 # unweighted over actions
    assert tables["PA-MPJPE (P2)"]["Sitting"] < tables["MPJPE (P1)"]["Sitting"] / 5


def test_predictions_plot_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(N, 17, 3\)"):
        plotting.predictions_plot(_poses(2), _poses(3))
    with pytest.raises(ValueError, match="hypotheses_mm"):
        plotting.predictions_plot(_poses(2), _poses(2), hypotheses_mm=np.zeros((2, 17, 3)))


def test_save_figure_writes_png_and_pdf_for_a_stem(tmp_path):
    paths = plotting.plot_predictions(_poses(2), _poses(2, seed=1), tmp_path / "figs" / "preds.v1")
    assert [p.name for p in paths] == ["preds.v1.png", "preds.v1.pdf"]
    assert paths[1].read_bytes().startswith(b"%PDF")
    _assert_drawn(paths[0])


def test_render_predictions_image_is_an_rgb_array_for_tensorboard():
    image = plotting.render_predictions_image(_poses(3), _poses(3, seed=1),
                                              hypotheses_mm=_poses(6).reshape(3, 2, 17, 3))
    # 3 panels in one row of 4 columns at most: (2.7 * 3 + 1.1) x (2.7 + 0.7) inches at 72 dpi.
    assert image.dtype == np.uint8 and image.shape == (244, 662, 3)  # 244.8 px, truncated by Agg
    assert image.std() > 15.0


# ---------------------------------------------------------------- figures from a checkpoint

@pytest.mark.slow
def test_predictions_figure_from_a_checkpoint(tiny_checkpoint, tiny_dataset, tmp_path):
    paths = figures.predictions_figure(tiny_checkpoint, tiny_dataset, split="test", n=6, hypotheses=3,
                                       out=tmp_path / "predictions")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    # 6 panels: 5 columns, 2 rows -> (2.7 * 5 + 1.1) x (2.7 * 2 + 0.7) inches at 110 dpi.
    _assert_drawn(paths[0], (1606, 671))


@pytest.mark.slow
def test_errors_figure_from_a_checkpoint(tiny_checkpoint, tiny_dataset, tmp_path):
    paths = figures.errors_figure(tiny_checkpoint, tiny_dataset, split="val", out=tmp_path / "errors.png")
    assert paths == [tmp_path / "errors.png"]
    _assert_drawn(paths[0])


@pytest.mark.slow
def test_latent_figure_from_a_checkpoint(tiny_checkpoint, tiny_dataset, tmp_path):
    paths = figures.latent_figure(tiny_checkpoint, tiny_dataset, split="test", n_neighbors=(5, 500),
                                  max_points=40, out=tmp_path / "latent.png")
    # Two panels: 500 neighbours is clipped to 39 (40 points, one encoder).
    _assert_drawn(paths[0], (round((4.6 * 2 + 2.2) * 110), round(4.9 * 110)))


# ---------------------------------------------------------------- animation of a predict .npz

def test_sequence_frames_draws_every_pose_at_the_asked_size_even_one_not_lifted():
    poses = _poses(3)
    poses[1] = np.nan  # a sample predict could not lift
    keypoints = poses[:, :, :2] / 4 + [320.0, 240.0]
    low = np.zeros((3, 17), bool)
    low[0, 13] = True
    frames = list(plotting.sequence_frames(keypoints, poses, low_confidence=low, image_size_px=(640, 480),
                                           hypotheses_mm=np.stack([_poses(3, seed=1), _poses(3, seed=2)], axis=1),
                                           size_px=(480, 240)))
    assert len(frames) == 3 and all(f.shape == (240, 480, 3) and f.dtype == np.uint8 for f in frames)
    assert all(f.std() > 15.0 for f in frames)
    with pytest.raises(ValueError, match="low_confidence"):
        next(plotting.sequence_frames(keypoints, poses, low_confidence=low[:2]))


@pytest.fixture(scope="module")
def predict_npz(tiny_dataset, tiny_checkpoint, tmp_path_factory) -> Path:
    """A `predict` .npz, 3 hypotheses, --fps 10: track "short" (5 frames) then "long" (8 frames)
    of a 1920x1080 camera, one wrist scored low."""
    truth = load_pose_arrays(tiny_dataset, "test").pose_3d_cam_mm[:13].astype(np.float64)
    camera = Intrinsics(np.array([1500.0, 1500.0]), np.array([960.0, 540.0]), np.zeros(3), np.zeros(2), (1920, 1080))
    scores = np.ones((13, 17))
    scores[7, 13] = 0.05
    folder = tmp_path_factory.mktemp("animate")
    np.savez(folder / "keypoints.npz", keypoints_2d=project_to_pixels(truth, camera), scores=scores,
             frames=np.r_[np.arange(5), np.arange(8)], tracks=np.r_[["short"] * 5, ["long"] * 8],
             image_size=[1920, 1080])
    predict_file(tiny_checkpoint, folder / "keypoints.npz", folder / "poses.npz", hypotheses=3, fps=10.0)
    return folder / "poses.npz"


@pytest.mark.slow
def test_animate_gif_of_the_longest_track_at_the_files_fps(predict_npz, tmp_path, capsys):
    out = tmp_path / "walk.gif"
    assert main(["viz", "animate", str(predict_npz), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as gif:
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
        assert gif.info["duration"] == 100  # 10 fps from the file
    assert len(frames) == 8 and frames[0].size == (960, 480)  # track "long"
    assert np.asarray(frames[3], np.float64).std() > 15.0


@pytest.mark.slow
def test_animate_mp4_of_a_chosen_track_and_frames(predict_npz, tmp_path, capsys):
    av = pytest.importorskip("av")
    _assert_one_line_error(["viz", "animate", str(predict_npz), "--out", str(tmp_path / "a.mp4"), "--track", "nope"],
                           f"{predict_npz}: no track 'nope'; its tracks: short, long", capsys)
    out = tmp_path / "short.mp4"
    assert main(["viz", "animate", str(predict_npz), "--out", str(out), "--track", "short",
                 "--max-frames", "3", "--fps", "20"]) == 0
    with av.open(str(out)) as video:
        frames = [frame.to_ndarray(format="rgb24") for frame in video.decode(video=0)]
        assert video.streams.video[0].average_rate == 20
    assert len(frames) == 3 and frames[0].shape == (480, 960, 3)
    assert frames[2].std() > 15.0


def _assert_one_line_error(args: list[str], message: str, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hpe-ray: error: ") and message in err and len(err.splitlines()) == 1, err


def test_animate_names_the_file_and_what_is_wrong_in_one_line(tmp_path, capsys):
    keypoints_only = tmp_path / "keypoints.npz"
    np.savez(keypoints_only, keypoints_2d=np.zeros((4, 17, 2)))
    (tmp_path / "text.npz").write_text("not an npz")
    cases = [([str(keypoints_only), "--out", str(tmp_path / "a.gif")], f"{keypoints_only}: no 'poses_3d'"),
             ([str(tmp_path / "text.npz"), "--out", str(tmp_path / "a.gif")], "text.npz: not an .npz file"),
             ([str(keypoints_only), "--out", str(tmp_path / "a.avi")], "a.avi: the animation is written as .mp4 or .gif"),
             ([str(tmp_path / "missing.npz"), "--out", str(tmp_path / "a.gif")], "missing.npz: predictions file not found")]
    for args, message in cases:
        _assert_one_line_error(["viz", "animate", *args], message, capsys)
    assert not (tmp_path / "a.gif").exists()
