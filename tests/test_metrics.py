import numpy as np
import pytest
import torch

from hpe_ray import metrics
from hpe_ray.camera import quaternion_to_matrix


def _poses(shape=(6,), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(*shape, 17, 3)) * 200


def test_mpjpe_of_a_10_mm_shift_is_exactly_10():
    gt = _poses()
    assert np.all(metrics.mpjpe(gt + [0.0, 10.0, 0.0], gt) == 10.0)


def test_per_joint_error_by_hand():
    gt = np.zeros((17, 3))
    pred = np.zeros((17, 3))
    pred[3] = [3.0, 4.0, 0.0]
    errors = metrics.per_joint_error(pred, gt)
    assert errors.shape == (17,) and errors[3] == 5.0 and errors.sum() == 5.0
    assert metrics.mpjpe(pred, gt) == pytest.approx(5.0 / 17)


def test_n_mpjpe_is_scale_invariant():
    gt = _poses()
    pred = gt + _poses(seed=1) * 0.1
    base = metrics.n_mpjpe(pred, gt)
    np.testing.assert_allclose(metrics.n_mpjpe(3.7 * pred, gt), base, rtol=1e-12)
    np.testing.assert_allclose(metrics.n_mpjpe(0.5 * gt, gt), 0, atol=1e-9)


def test_pa_mpjpe_of_a_similar_copy_is_zero():
    gt = _poses()
    rotation = quaternion_to_matrix([0.3, -0.5, 0.7, 0.2])
    pred = 1.8 * gt @ rotation.T + [120.0, -40.0, 3000.0]
    assert np.all(metrics.pa_mpjpe(pred, gt) < 1e-6 * metrics.mpjpe(np.zeros_like(gt), gt))
    np.testing.assert_allclose(metrics.procrustes_align(pred, gt), gt, atol=1e-9)


def test_procrustes_does_not_reflect():
    gt = _poses()
    mirrored = gt * [-1.0, 1.0, 1.0]
    # A mirror image cannot be reached by a rotation, so the error stays large.
    assert np.all(metrics.pa_mpjpe(mirrored, gt) > 10)
    aligned = metrics.procrustes_align(mirrored, gt)
    # The alignment is a proper similarity: centred, it is a positive scale times a rotation.
    centred_in, centred_out = mirrored - mirrored.mean(-2, keepdims=True), aligned - aligned.mean(-2, keepdims=True)
    transform = np.linalg.lstsq(centred_in[0], centred_out[0], rcond=None)[0]
    assert np.linalg.det(transform) > 0


def test_procrustes_is_least_squares_optimal():
    gt, pred = _poses(seed=2)[0], _poses(seed=3)[0]
    aligned = metrics.procrustes_align(pred, gt)
    centre = aligned.mean(0)

    def squared_error(x):  # what Procrustes minimises (not the mean of distances)
        return ((x - gt) ** 2).sum()

    best = squared_error(aligned)
    for q in ([1.0, 0.02, 0.0, 0.0], [1.0, 0.0, -0.02, 0.0], [1.0, 0.0, 0.0, 0.02]):
        assert squared_error((aligned - centre) @ quaternion_to_matrix(q).T + centre) > best
    assert squared_error(1.05 * (aligned - centre) + centre) > best
    assert squared_error(0.95 * (aligned - centre) + centre) > best
    assert squared_error(aligned + [1.0, 0.0, 0.0]) > best


def test_best_of_k_picks_the_minimum():
    errors = np.array([[5.0, 3.0, 9.0], [1.0, 2.0, 0.5]])
    np.testing.assert_array_equal(metrics.best_of_k(errors), [3.0, 0.5])
    np.testing.assert_array_equal(metrics.best_of_k(torch.tensor(errors)).numpy(), [3.0, 0.5])


def test_per_action_table_frame_weighted_then_action_average():
    errors = np.array([10.0, 20.0, 30.0, 40.0])
    actions = np.array(["Walking", "Walking", "Walking", "Eating"])
    table = metrics.per_action_table(errors, actions)
    assert table == {"Eating": 40.0, "Walking": 20.0, "Average": 30.0}
    assert list(table) == ["Eating", "Walking", "Average"]
    assert metrics.per_action_table(torch.tensor(errors), list(actions)) == table
    with pytest.raises(ValueError, match="one action per error"):
        metrics.per_action_table(errors, actions[:3])


@pytest.mark.parametrize("metric", [metrics.mpjpe, metrics.n_mpjpe, metrics.pa_mpjpe, metrics.per_joint_error,
                                    metrics.procrustes_align])
def test_numpy_and_torch_agree(metric):
    gt = _poses((4, 5), seed=4)
    pred = gt + _poses((4, 5), seed=5) * 0.3
    expected = metric(pred, gt)
    got = metric(torch.tensor(pred), torch.tensor(gt))
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="per_joint_error"):
        metrics.mpjpe(np.zeros((17, 3)), np.zeros((16, 3)))


# ---------------------------------------------------------------- hypotheses


def test_hypothesis_spread_hand_value():
    hypotheses = np.zeros((2, 17, 3))
    hypotheses[1, :, 0] = 2.0  # every joint: one hypothesis at 0, one at 2 mm: 1 mm from the centroid
    assert metrics.hypothesis_spread(hypotheses) == pytest.approx(1.0)
    assert metrics.hypothesis_spread(np.zeros((5, 17, 3))) == 0.0


def test_bone_length_spread_hand_value():
    hypotheses = np.zeros((2, 17, 3))
    leg = np.array([[0.0, 0, 0], [0, 400, 0], [0, 800, 0]])  # right hip, knee, ankle
    hypotheses[0, 1:4] = leg + [100.0, 0, 0]  # bone 0 (pelvis -> right hip): 100 mm, then 300 mm;
    hypotheses[1, 1:4] = leg + [300.0, 0, 0]  # the leg moves along, its bones keep their lengths
    # Bone 0: std of (100, 300) = 100; every other bone the same in both: mean over 16 bones.
    assert metrics.bone_length_spread(hypotheses) == pytest.approx(100.0 / 16)
    torch_value = metrics.bone_length_spread(torch.tensor(hypotheses))
    assert float(torch_value) == pytest.approx(100.0 / 16)


def test_radius_coverage_hand_values():
    # Ten hypotheses in +-pairs at 1..5 mm from a centroid at 0: the 90 % radius is 5 mm.
    offsets = np.array([d * s for d in range(1, 6) for s in (1, -1)], dtype=float)
    hypotheses = np.zeros((10, 17, 3))
    hypotheses[:, 1:, 0] = offsets[:, None]
    truth = np.zeros((17, 3))
    truth[1:9, 1] = 4.9   # 8 of the 16 moving joints inside, 8 outside; the root always inside
    truth[9:, 1] = 5.1
    assert metrics.radius_coverage(hypotheses, truth, 0.9) == pytest.approx(9 / 17)
    torch_value = metrics.radius_coverage(torch.tensor(hypotheses), torch.tensor(truth), 0.9)
    assert float(torch_value) == pytest.approx(9 / 17)


def test_spearman_hand_values():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties take their mean rank: ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3) give 3 / sqrt(10).
    assert metrics.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / np.sqrt(10))
    with pytest.raises(ValueError, match="same length"):
        metrics.spearman([1, 2], [1, 2, 3])
