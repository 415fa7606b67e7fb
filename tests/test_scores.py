"""Detector confidences given to the model (data.keypoint_scores): the simulated detector of
training (hand values), the config checks, and a tiny scored lifter trained by the training core,
lifted through `predict`, `Lifter` and the export beside an unscored one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import train_tiny_checkpoint
from hpe_ray.config import AugmentConfig, ConfigError, Config, config_from_dict
from hpe_ray.data.augment import (OCCLUDED_SCORE_MAX, detector_scores, occlude_keypoints, random_occlusion,
                                  simulate_detector)
from hpe_ray.data.batch import scored_pose_2d
from hpe_ray.data.stream import load_pose_arrays, load_stats
from hpe_ray.inference import Lifter, predict_file
from hpe_ray.inference.export import export_lifter, run_exported
from hpe_ray.inference.formats import DEFAULT_MIN_SCORE
from hpe_ray.inference.lifter import borrow_missing_joints
from hpe_ray.skeleton import JOINT_NEIGHBOURS, NUM_JOINTS
from hpe_ray.training.checkpoint import load_checkpoint
from hpe_ray.training.data import train_batches, val_batches


def _ladder(n: int) -> torch.Tensor:
    """(n, 17, 2) px: joint j at (10 j, 10 j), so every joint is told apart and the pose is 160 px tall."""
    return (10.0 * torch.arange(NUM_JOINTS, dtype=torch.float64))[:, None].expand(NUM_JOINTS, 2).expand(n, -1, -1)


# ---------------------------------------------------------------- the simulated detector

def test_occluded_scores_lie_below_predicts_threshold():
    assert OCCLUDED_SCORE_MAX == DEFAULT_MIN_SCORE


def test_detector_scores_hand_values():
    occluded = torch.zeros(20_000, NUM_JOINTS, dtype=torch.bool)
    occluded[:, ::2] = True  # joints 0, 2, ..., 16 occluded in every sample
    scores = detector_scores(occluded, torch.Generator().manual_seed(0), torch.zeros(1))
    assert scores.shape == (20_000, NUM_JOINTS) and scores.dtype == torch.float32
    low, high = scores[occluded], scores[~occluded]
    assert low.min() >= 0 and low.max() < OCCLUDED_SCORE_MAX
    assert abs(low.mean().item() - OCCLUDED_SCORE_MAX / 2) < 0.005  # uniform in [0, 0.3)
    assert high.max() <= 1 and abs(high.mean().item() - 0.9) < 0.005  # Beta(9, 1): mean 9 / 10
    assert abs((high < 0.7).float().mean().item() - 0.7 ** 9) < 0.005  # its CDF x ** 9
    assert high.min() >= OCCLUDED_SCORE_MAX


def test_occluded_joints_sit_on_a_neighbour_or_move_with_the_pose_size():
    keypoints = _ladder(4000)
    everything = torch.ones(4000, NUM_JOINTS, dtype=torch.bool)
    untouched = occlude_keypoints(keypoints, ~everything, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(untouched, keypoints)
    # shift 0: an occluded joint stays where it is or takes one of its neighbours' positions
    moved = occlude_keypoints(keypoints, everything, 0.0, torch.Generator().manual_seed(0))
    source = (moved[..., 0] / 10).round().long()  # the joint whose position it took
    for joint, neighbours in enumerate(JOINT_NEIGHBOURS):
        assert set(source[:, joint].tolist()) == {joint, *neighbours}
    on_neighbour = source != torch.arange(NUM_JOINTS)
    assert abs(on_neighbour.float().mean().item() - 0.5) < 0.01
    thorax_sources = source[on_neighbour[:, 8], 8]  # thorax: four neighbours, each a quarter of the time
    for neighbour in JOINT_NEIGHBOURS[8]:
        assert abs((thorax_sources == neighbour).float().mean().item() - 0.25) < 0.04
    # shift 0.1: the others move by Gaussian noise of sigma 0.1 x 160 px
    noisy = occlude_keypoints(keypoints, everything, 0.1, torch.Generator().manual_seed(0))
    displacement = (noisy - keypoints)[~on_neighbour]
    assert abs(displacement.std().item() - 16.0) < 0.5 and abs(displacement.mean().item()) < 0.5


def test_simulate_detector_occludes_the_configured_share_at_a_fixed_seed():
    keypoints = _ladder(20_000).float()
    out, scores = simulate_detector(keypoints, AugmentConfig(occluded_joints=0.1), torch.Generator().manual_seed(3))
    assert out.shape == (20_000, NUM_JOINTS, 2) and scores.shape == (20_000, NUM_JOINTS)
    assert scores.min() >= 0 and scores.max() <= 1
    low = scores < DEFAULT_MIN_SCORE
    assert abs(low.float().mean().item() - 0.1) < 0.005
    assert torch.equal(out[~low], keypoints[~low])  # confident joints are exact
    assert (out[low] != keypoints[low]).any(-1).float().mean() > 0.99  # occluded ones are not
    off, scores_off = simulate_detector(keypoints, AugmentConfig(occluded_joints=0.0), torch.Generator().manual_seed(3))
    assert torch.equal(off, keypoints) and scores_off.min() >= DEFAULT_MIN_SCORE
    assert random_occlusion(3, 1.0, torch.Generator(), "cpu").all()


def test_scored_pose_2d_layout_numpy_and_torch():
    pose_2d = np.arange(32, dtype=np.float32).reshape(1, 16, 2)
    scores = np.linspace(0, 1, 17)[None]
    out = scored_pose_2d(pose_2d, scores)
    assert out.shape == (1, 17, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])  # root: x, y zero, its score
    np.testing.assert_array_equal(out[0, 1:, :2], pose_2d[0])
    np.testing.assert_allclose(out[0, :, 2], scores[0], rtol=1e-6)
    torch.testing.assert_close(scored_pose_2d(torch.as_tensor(pose_2d), torch.as_tensor(scores)), torch.as_tensor(out))


def test_borrow_missing_joints_hand_values():
    keypoints = _ladder(3).numpy().copy()
    keypoints[0, 13] = np.nan                   # left wrist -> left elbow (12)
    keypoints[1, [0, 12, 13]] = np.nan          # pelvis -> right hip (1); wrist -> elbow -> shoulder (11)
    keypoints[2] = np.nan                       # nothing to borrow from
    out = borrow_missing_joints(keypoints)
    np.testing.assert_array_equal(out[0, 13], [120, 120])
    np.testing.assert_array_equal(out[1, [0, 12, 13]], [[10, 10], [110, 110], [110, 110]])
    assert np.isnan(out[2]).all()
    np.testing.assert_array_equal(np.delete(out[:2], [0, 12, 13], axis=1), np.delete(_ladder(2).numpy(), [0, 12, 13], axis=1))


def test_keypoint_scores_config():
    assert Config().data.keypoint_scores is False and Config().data.augment.occluded_joints == 0.1
    for bad in ({"loss": {"pairs": {"pose2d_to_pose3d": 1.0, "rgb_to_pose3d": 1.0}}}, {"data": {"in_memory": "never"}}):
        with pytest.raises(ConfigError, match="data.keypoint_scores needs in-memory lifting"):
            config_from_dict({**bad, "data": {**bad.get("data", {}), "keypoint_scores": True}})
    with pytest.raises(ConfigError, match="data.augment.occluded_joints"):
        config_from_dict({"data": {"augment": {"occluded_joints": 1.5}}})


def test_training_batches_carry_simulated_scores_and_validation_batches_none(tiny_dataset):
    cfg = Config().with_overrides({"data.dir": str(tiny_dataset), "data.keypoint_scores": True,
                                   "train.batch_size": 64})
    stats = load_stats(tiny_dataset, cfg.data.mode_2d)
    _, batches = train_batches(cfg, stats, 0, 1, torch.device("cpu"), load_pose_arrays(tiny_dataset, "train"))
    scores = torch.cat([batch["keypoint_scores"] for batch in batches(0)])
    assert scores.shape[1:] == (NUM_JOINTS,) and abs((scores < DEFAULT_MIN_SCORE).float().mean().item() - 0.1) < 0.03
    validation = val_batches(cfg, stats, "pose2d", 0, 1, torch.device("cpu"))()
    assert "keypoint_scores" not in validation[0]  # exact 2D: the model takes every score as 1
    unscored = cfg.with_overrides({"data.keypoint_scores": False})
    _, batches = train_batches(unscored, stats, 0, 1, torch.device("cpu"), load_pose_arrays(tiny_dataset, "train"))
    assert "keypoint_scores" not in next(iter(batches(0)))


# ---------------------------------------------------------------- a scored lifter, end to end

@pytest.fixture(scope="module")
def scored_checkpoint(tiny_dataset, tmp_path_factory):
    return train_tiny_checkpoint(tiny_dataset, tmp_path_factory.mktemp("scored-lifter"), mode_2d="scaled", epochs=5,
                                 overrides={"data.keypoint_scores": True})


def _coco_results(keypoints: np.ndarray, path, low: dict, missing: tuple[int, int] | None = None):
    """COCO results JSON in Human3.6M joint order, one track; low {(frame, joint): score}; a last
    single-frame track 'alone' whose joint `missing[1]` is not detected."""
    entries = []
    for frame, row in enumerate(keypoints):
        triplets = np.concatenate([row, np.ones((NUM_JOINTS, 1))], axis=1)
        for (f, joint), score in low.items():
            if f == frame:
                triplets[joint, 2] = score
        entries.append({"image_id": frame, "track_id": "walk", "keypoints": triplets.ravel().tolist()})
    if missing is not None:
        triplets = np.concatenate([keypoints[missing[0]], np.ones((NUM_JOINTS, 1))], axis=1)
        triplets[missing[1]] = 0
        entries.append({"image_id": 0, "track_id": "alone", "keypoints": triplets.ravel().tolist()})
    path.write_text(json.dumps(entries))
    return path


def test_scored_lifter_reads_the_scores_through_predict(scored_checkpoint, tiny_checkpoint, tiny_dataset, tmp_path):
    loaded = load_checkpoint(scored_checkpoint)
    assert loaded.cfg.data.keypoint_scores
    assert loaded.model.encoders["pose2d"].trunk.stem[0].in_features == 16 * 2 + 17
    assert np.isfinite(json.loads((scored_checkpoint.parent / "metrics.json").read_text())["val_mpjpe"])

    keypoints = load_pose_arrays(tiny_dataset, "test").keypoints_2d_px[:6].astype(np.float64)
    low = {(2, 13): 0.05, (2, 16): 0.05, (4, 3): 0.05}
    source = _coco_results(keypoints, tmp_path / "results.json", low, missing=(1, 13))
    summary = predict_file(scored_checkpoint, source, tmp_path / "scored.npz", keypoint_format="h36m")
    assert "reads the detector's scores" in str(summary)
    with np.load(tmp_path / "scored.npz") as out:
        assert out["valid"].all() and len(out["problems"]) == 0  # the single image with a missing joint too
        assert np.isfinite(out["poses_3d"]).all()
        scores = out["keypoint_scores"]
        assert scores.shape == (7, NUM_JOINTS) and scores[2, 13] == scores[4, 3] == 0.05 and scores[6, 13] == 0
        assert out["low_confidence"][[2, 2, 4, 6], [13, 16, 3, 13]].all() and out["low_confidence"].sum() == 4
        scored_poses = out["poses_3d"]

    lifter = Lifter(loaded)
    ones = np.ones((6, NUM_JOINTS))
    dimmed = ones.copy()
    dimmed[2, [13, 16]] = 0.05
    exact = lifter.lift(keypoints).poses_3d
    np.testing.assert_array_equal(lifter.lift(keypoints, scores=ones).poses_3d, exact)  # no scores: exact 2D
    reread = lifter.lift(keypoints, scores=dimmed).poses_3d
    assert np.abs(reread[2] - exact[2]).max() > 1e-3 and np.array_equal(reread[3], exact[3])  # the model reads them
    # predict filled frame 2's dimmed joints from frames 1 and 3 and kept their low score
    assert np.abs(scored_poses[:6] - exact).max() > 1e-3

    # an unscored checkpoint reads no scores: they only weight the fit to the 2D (model.fit_2d),
    # where frame 2's dimmed joints keep more of the model's own x, y; a missing joint skips the image
    plain = Lifter.from_checkpoint(tiny_checkpoint)
    focal, center = plain.default_camera()  # a camera-mode model: predict falls back to this camera
    assert not plain.reads_scores and plain.model.fit_2d
    undimmed = plain.lift(keypoints, focal, center).poses_3d
    weighted = plain.lift(keypoints, focal, center, scores=dimmed).poses_3d
    others = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(weighted[others], undimmed[others])
    assert np.abs(weighted[2, [13, 16]] - undimmed[2, [13, 16]]).max() > 1e-3
    plain.model.fit_2d = False
    np.testing.assert_array_equal(plain.lift(keypoints, focal, center, scores=dimmed).poses_3d,
                                  plain.lift(keypoints, focal, center).poses_3d)
    plain.model.fit_2d = True
    with pytest.warns(UserWarning, match="most common camera|skipped 1 unusable"):
        predict_file(tiny_checkpoint, source, tmp_path / "plain.npz", keypoint_format="h36m")
    with np.load(tmp_path / "plain.npz") as out:
        assert out["valid"].tolist() == [True] * 6 + [False] and "sample 6" in out["problems"][0]
        np.testing.assert_allclose(out["poses_3d"][:6], plain.lift(out["keypoints_2d"][:6], focal, center,
                                                                   scores=out["keypoint_scores"][:6]).poses_3d, atol=1e-4)


def test_scored_lifter_exports_the_scores_as_an_input(scored_checkpoint, tiny_dataset, tmp_path):
    import onnx

    paths = export_lifter(scored_checkpoint, tmp_path)
    description = json.loads(paths[-1].read_text())
    assert "keypoint_scores" in description["inputs"]
    graph = onnx.load(str(tmp_path / "lifter.onnx")).graph
    assert [i.name for i in graph.input][-1] == "keypoint_scores"
    arrays = load_pose_arrays(tiny_dataset, "val")
    scores = np.random.default_rng(0).uniform(0, 1, (9, NUM_JOINTS))
    focal, center = np.full((9, 2), 1000.0), np.full((9, 2), 500.0)
    lifted = Lifter.from_checkpoint(scored_checkpoint).lift(arrays.keypoints_2d_px[:9], focal, center,
                                                          scores=scores).poses_3d
    inputs = tuple(torch.as_tensor(np.asarray(x), dtype=torch.float32)
                   for x in (arrays.keypoints_2d_px[:9], focal, center, scores))
    for name in ("lifter.pt", "lifter.onnx"):
        np.testing.assert_allclose(run_exported(tmp_path / name, inputs), lifted, atol=0.05)
