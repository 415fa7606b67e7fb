import pytest

from hpe_ray.config import Config, ConfigError, config_from_dict, load_config, stored_config


def test_defaults_are_the_thesis_lifting_setup():
    cfg = Config()
    assert cfg.model.latent_dim == 100
    assert cfg.loss.beta.max == pytest.approx(0.001)
    assert cfg.loss.pair_list() == [("pose2d", "pose3d", 1.0)]
    assert not cfg.uses_images


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  latnet_dim: 32\n")
    with pytest.raises(ConfigError, match=r"model\.latnet_dim: unknown key"):
        load_config(path)


def test_bad_value_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  beta:\n    kind: exponential\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*\n.*loss\.beta\.kind"):
        load_config(path)


def test_unknown_pair_is_rejected():
    with pytest.raises(ConfigError, match="unknown pair 'depth_to_pose3d'"):
        config_from_dict({"loss": {"pairs": {"depth_to_pose3d": 1.0}}})


def test_image_size_must_be_power_of_two():
    with pytest.raises(ConfigError, match="data.image_size"):
        config_from_dict({"data": {"image_size": 100}})


def test_reprojection_needed_without_3d_labels():
    with pytest.raises(ConfigError, match="reprojection_weight"):
        config_from_dict({"loss": {"use_3d_labels": False}})


def test_overrides_and_yaml_round_trip(tmp_path):
    cfg = Config().with_overrides({"model.latent_dim": 32, "loss.pairs.rgb_to_pose3d": 0.5,
                                   "loss.beta.kind": "cyclical"})
    assert cfg.model.latent_dim == 32
    assert ("rgb", "pose3d", 0.5) in cfg.loss.pair_list()
    assert cfg.uses_images
    path = tmp_path / "best.yaml"
    cfg.to_yaml(path)
    assert load_config(path) == cfg


def test_override_of_missing_section_is_named():
    with pytest.raises(ConfigError, match="modle"):
        Config().with_overrides({"modle.latent_dim": 3})


@pytest.mark.parametrize("name", ["lifting.yaml", "crossmodal.yaml"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    assert cfg.model.latent_dim == 100


def test_a_stored_config_without_later_keys_reads_as_it_behaved_then():
    """A checkpoint's config written before model.conditioned / sample_dims existed built an
    unconditioned decoder with noise in every latent dim, whatever today's defaults are."""
    tree = Config().model_dump()
    for key in ("conditioned", "sample_dims"):
        del tree["model"][key]
    del tree["train"]["fit_sample_temperature"]
    old = stored_config(tree, "old checkpoint")
    assert (old.model.conditioned, old.model.sample_dims, old.train.fit_sample_temperature) == (False, None, False)
    new = stored_config(Config().model_dump(), "new checkpoint")
    assert (new.model.conditioned, new.model.sample_dims, new.train.fit_sample_temperature) == (True, 8, True)


def test_fit_2d_is_a_strength_and_reads_the_old_true_and_false():
    """Checkpoints and configs written when model.fit_2d was on/off store true/false: 1 and 0."""
    assert config_from_dict({"model": {"fit_2d": True}}).model.fit_2d == 1.0
    assert config_from_dict({"model": {"fit_2d": False}}).model.fit_2d == 0.0
    assert config_from_dict({"model": {"fit_2d": 0.5}}).model.fit_2d == 0.5
    with pytest.raises(ConfigError, match=r"model\.fit_2d"):
        config_from_dict({"model": {"fit_2d": -0.1}})
