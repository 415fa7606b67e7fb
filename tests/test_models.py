"""Model package: shapes, KL and its normalisation, beta schedules, reprojection, pretrained weights, overfitting."""

import math

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from hpe_ray.camera import H36M_INTRINSICS, project_to_pixels
from hpe_ray.models import (
    MLP,
    CrossModalVAE,
    ImageDecoder,
    ImageEncoder,
    best_of_k_loss,
    estimate_root_translation,
    kl_divergence,
    make_beta_schedule,
    pair_loss,
    reprojection_loss,
)
from hpe_ray.models.vae import hypothesis_noise

ALL_ENCODERS = {"pose2d", "rgb"}
ALL_DECODERS = {"pose3d", "pose2d", "rgb"}


def small_model(**kwargs) -> CrossModalVAE:
    defaults = dict(latent_dim=8, hidden=32, blocks=2)
    return CrossModalVAE(**{**defaults, **kwargs})


# ---- shapes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("image_size", [64, 128])
def test_every_encoder_decoder_pair_has_the_modality_shape(image_size):
    torch.manual_seed(0)
    model = small_model(encoders=ALL_ENCODERS, decoders=ALL_DECODERS, image_size=image_size).eval()
    batch = {"pose_2d": torch.randn(2, 16, 2), "image": torch.rand(2, 3, image_size, image_size) * 2 - 1}
    expected = {"pose3d": (2, 16, 3), "pose2d": (2, 16, 2), "rgb": (2, 3, image_size, image_size)}
    with torch.no_grad():
        for src in ALL_ENCODERS:
            for dst in ALL_DECODERS:
                recon, mu, logvar = model(src, dst, batch)
                assert recon.shape == expected[dst], (src, dst)
                assert mu.shape == logvar.shape == (2, 8)


def test_image_decoder_output_is_within_minus_one_one():
    decoder = ImageDecoder(latent_dim=8, image_size=64, base_channels=32).eval()
    last_conv = [m for m in decoder.modules() if isinstance(m, nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last_conv.weight.mul_(1e4)  # pushes the pre-activation far outside [-1, 1]
        image = decoder(torch.randn(4, 8))
    assert image.shape == (4, 3, 64, 64)
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert image.abs().max() > 0.99


def test_image_decoder_rejects_a_size_not_divisible_by_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        ImageDecoder(latent_dim=8, image_size=100)


@pytest.mark.parametrize("blocks", [1, 2, 5, 6])
@pytest.mark.parametrize("residual", [False, True])
def test_mlp_has_blocks_linear_layers_with_or_without_residual(blocks, residual):
    # Same number of layers either way, so residual and plain networks compare at equal budget.
    mlp = MLP(32, hidden=16, blocks=blocks, residual=residual, batch_norm=True, dropout=0.1)
    assert sum(isinstance(m, nn.Linear) for m in mlp.modules()) == blocks
    assert mlp(torch.randn(4, 32)).shape == (4, 16)


def test_residual_mlp_adds_its_input():
    mlp = MLP(4, hidden=4, blocks=3, residual=True)
    with torch.no_grad():
        for p in mlp.groups.parameters():
            p.zero_()  # the residual branch then outputs 0, leaving the skip
    x = torch.randn(3, 4)
    torch.testing.assert_close(mlp(x), mlp.stem(x))


def test_unknown_modality_is_named():
    with pytest.raises(ValueError, match="'depth'"):
        CrossModalVAE(encoders={"depth"})
    model = small_model()
    with pytest.raises(ValueError, match="'rgb'"):
        model.decode("rgb", torch.zeros(1, 8))


# ---- lifting and the deterministic baseline ------------------------------------------------------

def test_lift_returns_mean_of_mu_and_k_distinct_samples():
    torch.manual_seed(0)
    model = small_model().eval()
    pose_2d = torch.randn(3, 16, 2)
    with torch.no_grad():
        mean, samples = model.lift("pose2d", pose_2d, hypotheses=5)
        mu, _ = model.encode("pose2d", pose_2d)
        torch.testing.assert_close(mean, model.decode("pose3d", mu))
    assert mean.shape == (3, 16, 3) and samples.shape == (3, 5, 16, 3)
    assert not torch.allclose(samples[:, 0], samples[:, 1])
    assert model.lift("pose2d", pose_2d, hypotheses=0)[1].shape == (3, 0, 16, 3)
    with pytest.raises(ValueError, match="hypotheses"):
        model.lift("pose2d", pose_2d, hypotheses=-1)


def test_deterministic_baseline_has_no_kl_and_no_logvar_heads():
    torch.manual_seed(0)
    vae = small_model()
    baseline = small_model(deterministic=True)
    head_params = 32 * 8 + 8  # one Linear(hidden=32, latent=8)
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(vae) - n_params(baseline) == head_params
    batch = {"pose_2d": torch.randn(4, 16, 2), "pose_3d": torch.randn(4, 16, 3)}
    recon, mu, logvar = baseline("pose2d", "pose3d", batch, sample=True)
    assert logvar is None
    losses = pair_loss(recon, batch["pose_3d"], mu, logvar, beta=10.0)
    assert losses["kl"].item() == 0.0
    torch.testing.assert_close(losses["total"], losses["recon"])
    torch.testing.assert_close(baseline("pose2d", "pose3d", batch)[0], recon)  # no sampling
    mean, samples = baseline.lift("pose2d", batch["pose_2d"], hypotheses=3)  # one answer, repeated
    torch.testing.assert_close(samples, mean[:, None].expand_as(samples))


def test_tiny_lifting_vae_overfits_a_batch():
    torch.manual_seed(0)
    model = CrossModalVAE(latent_dim=16, hidden=64, blocks=2)
    batch = {"pose_2d": torch.randn(32, 16, 2), "pose_3d": torch.randn(32, 16, 3)}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        recon, mu, logvar = model("pose2d", "pose3d", batch)
        total = pair_loss(recon, batch["pose_3d"], mu, logvar, beta=1e-3)["total"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < losses[0] / 10


# ---- KL and pair loss ---------------------------------------------------------------------------

def test_kl_of_standard_normal_is_zero():
    assert kl_divergence(torch.zeros(4, 10), torch.zeros(4, 10)).item() == 0.0


def test_kl_hand_computed_and_batch_averaged():
    # Sample 1: dim 0 N(1, 1) -> 0.5 * 1^2 = 0.5; dim 1 N(0, 2) -> 0.5 (2 - 1 - ln 2).
    # Sample 2: standard normal -> 0. Batch mean halves the sum.
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]], dtype=torch.float64)
    expected = (0.5 + 0.5 * (1.0 - math.log(2.0))) / 2
    assert kl_divergence(mu, logvar).item() == pytest.approx(expected)
    assert kl_divergence(mu, logvar, num_target_elements=48).item() == pytest.approx(expected / 48)


def test_pair_loss_divides_kl_by_target_element_count():
    mu = torch.ones(2, 4)
    logvar = torch.zeros(2, 4)  # KL per sample = 4 * 0.5 = 2
    pose_target = torch.ones(2, 16, 3)
    out = pair_loss(torch.zeros(2, 16, 3), pose_target, mu, logvar, beta=0.5, kind="mse")
    assert out["recon"].item() == pytest.approx(1.0)
    assert out["kl"].item() == pytest.approx(2.0 / 48)
    assert out["total"].item() == pytest.approx(1.0 + 0.5 * 2.0 / 48)
    image_target = torch.full((2, 3, 8, 8), 2.0)
    out = pair_loss(torch.zeros(2, 3, 8, 8), image_target, mu, logvar, beta=1.0, kind="l1")
    assert out["recon"].item() == pytest.approx(2.0)
    assert out["kl"].item() == pytest.approx(2.0 / (3 * 8 * 8))


def test_pair_loss_rejects_unknown_kind_and_shape_mismatch():
    with pytest.raises(ValueError, match="'huber'"):
        pair_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 2), torch.zeros(1, 2), 1.0, kind="huber")
    with pytest.raises(ValueError, match="shape"):
        pair_loss(torch.zeros(1, 3), torch.zeros(1, 4), torch.zeros(1, 2), torch.zeros(1, 2), 1.0)


# ---- beta schedules -----------------------------------------------------------------------------

def test_constant_beta():
    schedule = make_beta_schedule("constant", beta_max=0.3)
    assert [schedule(s) for s in (0, 10, 10**6)] == [0.3, 0.3, 0.3]


def test_linear_warmup_beta():
    schedule = make_beta_schedule("linear", beta_max=2.0, warmup_steps=100)
    assert schedule(0) == 0.0
    assert schedule(50) == pytest.approx(1.0)
    assert schedule(100) == pytest.approx(2.0)
    assert schedule(5000) == pytest.approx(2.0)
    assert make_beta_schedule("linear", beta_max=2.0, warmup_steps=0)(0) == 2.0


def test_cyclical_beta_is_periodic_and_resets_each_cycle():
    schedule = make_beta_schedule("cyclical", beta_max=1.0, n_cycles=4, total_steps=400, ratio=0.5)
    assert [schedule(s) for s in (0, 25, 50, 99)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    for cycle_start in (100, 200, 300):
        assert schedule(cycle_start) == 0.0
    assert all(schedule(s) == pytest.approx(schedule(s + 100)) for s in range(300))
    assert schedule(400) == 1.0


def test_unknown_beta_schedule_is_named():
    with pytest.raises(ValueError, match="'sigmoid'"):
        make_beta_schedule("sigmoid", beta_max=1.0)


# ---- reprojection -------------------------------------------------------------------------------

def _posed_on_camera(intrinsics_vector: torch.Tensor):
    """A random pose placed at a known root, its 2D projection and the (B, 9) intrinsics."""
    torch.manual_seed(0)
    pose_rootrel_mm = torch.randn(4, 17, 3, dtype=torch.float64) * 300.0
    pose_rootrel_mm[:, 0] = 0.0
    root_mm = torch.tensor([[100.0, -50.0, 4500.0], [-300.0, 200.0, 3000.0],
                            [0.0, 0.0, 5200.0], [250.0, 100.0, 3800.0]], dtype=torch.float64)
    intrinsics = intrinsics_vector.to(torch.float64).expand(4, 9)
    keypoints_2d_px = project_to_pixels(pose_rootrel_mm + root_mm[:, None], intrinsics)
    return pose_rootrel_mm, root_mm, keypoints_2d_px, intrinsics


PINHOLE = torch.tensor([1145.0, 1144.0, 512.0, 515.0, 0, 0, 0, 0, 0])


def test_root_translation_is_recovered_without_distortion():
    pose, root_mm, keypoints_px, intrinsics = _posed_on_camera(PINHOLE)
    keypoints_norm = (keypoints_px - intrinsics[:, None, 2:4]) / intrinsics[:, None, 0:2]
    torch.testing.assert_close(estimate_root_translation(pose, keypoints_norm), root_mm)
    torch.testing.assert_close(estimate_root_translation(pose, keypoints_norm, root_mm[:, 2]), root_mm)


@pytest.mark.parametrize("known_depth", [False, True])
def test_reprojection_loss_is_zero_for_a_consistent_pose_and_positive_otherwise(known_depth):
    pose, root_mm, keypoints_px, intrinsics = _posed_on_camera(PINHOLE)
    depth = root_mm[:, 2] if known_depth else None
    assert reprojection_loss(pose, keypoints_px, intrinsics, depth).item() == pytest.approx(0.0, abs=1e-9)
    wrong = pose.clone()
    wrong[:, 3, 0] += 100.0  # right ankle 10 cm to the side
    assert reprojection_loss(wrong, keypoints_px, intrinsics, depth).item() > 1e-3


def test_reprojection_loss_is_small_with_h36m_distortion():
    # The translation solve ignores distortion, so a consistent pose costs a little under 1 px.
    intr = H36M_INTRINSICS["54138969"]
    pose, _, keypoints_px, intrinsics = _posed_on_camera(torch.as_tensor(intr.as_vector()))
    assert reprojection_loss(pose, keypoints_px, intrinsics).item() < 1.0 / intr.focal_px[0]


def test_reprojection_loss_has_finite_gradient_for_a_collapsed_pose():
    _, _, keypoints_px, intrinsics = _posed_on_camera(PINHOLE)
    collapsed = torch.zeros(4, 17, 3, dtype=torch.float64, requires_grad=True)
    loss = reprojection_loss(collapsed, keypoints_px, intrinsics)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(collapsed.grad).all()


def test_reprojection_loss_stays_float32_under_bf16_autocast():
    pose, _, keypoints_px, intrinsics = _posed_on_camera(PINHOLE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = reprojection_loss(pose.to(torch.bfloat16), keypoints_px.float(), intrinsics.float())
    assert loss.dtype == torch.float32
    # The bf16 rounding of the input pose alone costs ~1e-4; computing the loss in bf16, ~7e-4.
    assert loss.item() < 2e-4


# ---- pretrained image weights -------------------------------------------------------------------

def test_missing_pretrained_file_names_the_path(tmp_path):
    missing = tmp_path / "resnet18-imagenet.pth"
    with pytest.raises(FileNotFoundError, match="resnet18-imagenet.pth"):
        ImageEncoder(latent_dim=8, pretrained_weights=str(missing))


def test_torchvision_weights_not_cached_fail_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth")):
        ImageEncoder(latent_dim=8, pretrained_weights="torchvision")


def test_pretrained_state_dict_is_loaded_without_the_classifier(tmp_path):
    torch.manual_seed(1)
    reference = resnet18(weights=None)
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    encoder = ImageEncoder(latent_dim=8, pretrained_weights=str(path))
    torch.testing.assert_close(encoder.backbone.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(encoder.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_a_file_that_is_not_a_resnet18_is_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="other.pth"):
        ImageEncoder(latent_dim=8, pretrained_weights=str(path))



def test_best_of_k_loss_hand_values():
    target = torch.zeros(2, 2)
    hypotheses = torch.tensor([[[1.0, 1.0], [0.5, 0.5]],    # sample 0: MSE 1 and 0.25 -> 0.25
                               [[0.0, 2.0], [3.0, 0.0]]])   # sample 1: MSE 2 and 4.5 -> 2
    assert best_of_k_loss(hypotheses, target).item() == pytest.approx((0.25 + 2.0) / 2)
    assert best_of_k_loss(hypotheses, target, "l1").item() == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="do not match"):
        best_of_k_loss(hypotheses, torch.zeros(2, 3))


def test_forward_with_hypotheses_decodes_the_mean_first_then_k_samples():
    torch.manual_seed(0)
    model = small_model().eval()
    batch = {"pose_2d": torch.randn(3, 16, 2)}
    with torch.no_grad():
        recon, mu, _ = model("pose2d", "pose3d", batch, hypotheses=4)
        assert recon.shape == (3, 5, 16, 3)
        torch.testing.assert_close(recon[:, 0], model.decode("pose3d", mu))
        assert not torch.allclose(recon[:, 1], recon[:, 2])
        baseline = small_model(deterministic=True).eval()
        assert baseline("pose2d", "pose3d", batch, hypotheses=4)[0].shape == (3, 16, 3)  # no posterior: one answer


def test_bounded_logvar_hand_values():
    from hpe_ray.models.encoders import bounded_logvar

    raw = torch.tensor([-10.0, 0.0, 2.0, 100.0], dtype=torch.float64)
    # 2 - ln(1 + e^(2 - raw)): about raw well below the bound, 2 - ln 2 at it, 2 far above it.
    expected = [2 - math.log1p(math.exp(12)), 2 - math.log1p(math.exp(2)), 2 - math.log(2), 2.0]
    torch.testing.assert_close(bounded_logvar(raw, 2.0), torch.tensor(expected, dtype=torch.float64))
    assert bounded_logvar(raw, 2.0)[0].item() == pytest.approx(-10.0, abs=1e-5)
    raw.requires_grad_(True)
    bounded_logvar(raw, 2.0).sum().backward()  # d/draw = sigmoid(2 - raw): never exactly 0
    torch.testing.assert_close(raw.grad, torch.sigmoid(2.0 - raw.detach()))
    assert raw.grad[-1].item() > 0


def test_logvar_heads_stay_bounded_on_huge_features():
    # Features that grew while the backbone trained: the unbounded linear head puts out
    # log-variances in the hundreds, whose exp (in the KL and the sampled z) overflows.
    from hpe_ray.models.encoders import GaussianHeads

    torch.manual_seed(0)
    heads = GaussianHeads(features=64, latent_dim=8)
    features = torch.randn(16, 64) * 1e3
    mu, logvar = heads(features)
    assert heads.logvar(features).max() > 100 and not torch.isfinite(kl_divergence(mu, heads.logvar(features)))
    assert logvar.max() <= GaussianHeads.LOGVAR_MAX and torch.isfinite(kl_divergence(mu, logvar))
    assert torch.exp(0.5 * logvar).max() <= math.exp(1.0)


def test_conditioned_decoder_reads_the_latent_mean_beside_the_sample():
    torch.manual_seed(0)
    model = CrossModalVAE(latent_dim=8, hidden=32, blocks=2, conditioned=True).eval()
    assert model.decoders["pose3d"].trunk.stem[0].in_features == 16  # z and mu side by side
    pose_2d = torch.randn(3, 16, 2)
    with torch.no_grad():
        mu, _ = model.encode("pose2d", pose_2d)
        mean, samples = model.lift("pose2d", pose_2d, hypotheses=4)
        torch.testing.assert_close(mean, model.decode("pose3d", mu, mu))
        torch.testing.assert_close(mean, model.decode("pose3d", mu))  # mu defaults to z itself
        # The same sample read against another mean decodes to another pose.
        z = mu + 0.5
        assert not torch.allclose(model.decode("pose3d", z, mu), model.decode("pose3d", z, mu + 1.0))
    assert samples.shape == (3, 4, 16, 3)


def test_sampling_noise_stays_in_the_first_sample_dims_scaled_by_the_temperature():
    model = CrossModalVAE(latent_dim=6, hidden=16, blocks=1, sample_dims=2)
    mu, logvar = torch.arange(12.0).view(2, 6), torch.full((2, 6), math.log(4.0))  # std 2
    torch.manual_seed(3)
    z = model.reparameterize(mu, logvar, temperature=0.5)
    torch.manual_seed(3)
    noise = torch.randn(2, 6)
    torch.testing.assert_close(z[:, :2], mu[:, :2] + 0.5 * 2.0 * noise[:, :2])
    torch.testing.assert_close(z[:, 2:], mu[:, 2:])  # the other dims decode at their mean
    # N >= latent_dim is every dim, as None.
    assert CrossModalVAE(latent_dim=6, hidden=16, blocks=1, sample_dims=6).sample_dims is None
    with pytest.raises(ValueError, match="sample_dims"):
        CrossModalVAE(latent_dim=6, hidden=16, blocks=1, sample_dims=0)


def test_hypothesis_noise_is_antithetic_pairs_along_orthogonal_directions():
    torch.manual_seed(0)
    noise = hypothesis_noise(4, 7, 3)  # 4 pairs in 3 dims: a second block of directions; K odd
    assert noise.shape == (4, 7, 3)
    torch.testing.assert_close(noise[:, 1::2], -noise[:, 0:6:2])  # (e, -e), the pairs first
    unit = noise[:, 0:6:2] / noise[:, 0:6:2].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(unit @ unit.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-5, rtol=0)
    # Each draw is still standard normal: covariance I (the pairs make the mean exactly 0).
    many = hypothesis_noise(20000, 4, 3).flatten(0, 1)
    torch.testing.assert_close(many.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(many.T @ many / len(many), torch.eye(3), atol=0.05, rtol=0)
    assert hypothesis_noise(2, 0, 3).shape == (2, 0, 3)


def test_lift_draws_its_hypotheses_from_hypothesis_noise_in_the_sample_dims():
    model = CrossModalVAE(latent_dim=6, hidden=16, blocks=1, sample_dims=2).eval()
    model.sample_temperature.fill_(0.5)
    pose_2d = torch.randn(3, 16, 2)
    with torch.no_grad():
        torch.manual_seed(4)
        _, samples = model.lift("pose2d", pose_2d, hypotheses=5)
        mu, logvar = model.encode("pose2d", pose_2d)
        torch.manual_seed(4)
        z = mu[:, None].repeat(1, 5, 1)
        z[..., :2] += 0.5 * hypothesis_noise(3, 5, 2) * torch.exp(0.5 * logvar[:, None, :2])
        expected = model.decode("pose3d", z.flatten(0, 1)).view(3, 5, 16, 3)
    torch.testing.assert_close(samples, expected)


def test_hypotheses_are_drawn_at_the_stored_temperature_and_old_checkpoints_draw_at_one():
    torch.manual_seed(0)
    model = CrossModalVAE(latent_dim=8, hidden=32, blocks=2).eval()
    pose_2d = torch.randn(3, 16, 2)
    with torch.no_grad():
        mean, _ = model.lift("pose2d", pose_2d)
        model.sample_temperature.fill_(0.0)  # no spread: every hypothesis is the mean
        _, samples = model.lift("pose2d", pose_2d, hypotheses=4)
    torch.testing.assert_close(samples, mean[:, None].expand(-1, 4, -1, -1))
    state = model.state_dict()
    assert float(state["sample_temperature"]) == 0.0
    del state["sample_temperature"]  # a checkpoint written before the buffer existed
    restored = CrossModalVAE(latent_dim=8, hidden=32, blocks=2)
    restored.sample_temperature.fill_(0.3)
    restored.load_state_dict(state)
    assert float(restored.sample_temperature) == 1.0
