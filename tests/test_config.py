import pickle

import pytest

from galcae.config import (ConfigError, Galaxy, Ranges, SimConfig, TrainConfig, apply_overrides,
                           from_dict, load_stage, read_config_file, to_dict)


def test_paper_preset_is_table_1():
    """The shipped paper preset holds Table 1's ranges and the documented unstated values."""
    cfg = load_stage("simulate", "paper")
    assert cfg.ranges.flux == (500.0, 50000.0)
    assert cfg.ranges.half_light_radius == (0.3, 5.0)
    assert cfg.ranges.sersic_n == (0.5, 4.0)
    assert cfg.ranges.ellipticity == (0.0, 0.6)
    assert cfg.ranges.position_angle == (0.0, 180.0)
    assert cfg.ranges.x == (0.0, 64.0) and cfg.ranges.y == (0.0, 64.0)
    assert (cfg.n_galaxies, cfg.stamp_size, cfg.pixel_scale) == (1000, 64, 0.2)
    assert (cfg.psf.profile, cfg.psf.fwhm) == ("gaussian", 0.7)
    assert (cfg.noise.sky_level, cfg.noise.gain, cfg.noise.read_noise) == (100.0, 1.0, 5.0)
    train = load_stage("train", "paper")
    assert (train.epochs, train.batch_size, train.supervised) == (100, 64, ("flux", "half_light_radius"))
    assert abs(train.test_fraction - 1 / 11) < 1e-6


def test_unknown_key_is_refused_with_a_suggestion():
    """A typo in a key names the key and suggests the close match."""
    with pytest.raises(ConfigError, match=r"unknown config key 'psf\.fhwm'.*did you mean 'fwhm'"):
        load_stage("simulate", "paper", ["psf.fhwm=0.8"])


def test_negative_flux_range_is_refused():
    """A flux range below zero is refused with a message naming the field."""
    with pytest.raises(ConfigError, match="ranges.flux"):
        Ranges(flux=(-1.0, 10.0))


@pytest.mark.parametrize("override, key", [
    ("ranges.sersic_n=[0.1,4]", "ranges.sersic_n"),
    ("psf.profile=airy", "psf.profile"),
    ("n_galaxies=0", "n_galaxies"),
    ("stamp_size=abc", "stamp_size"),
    ("sweep.parameter=colour", "sweep.parameter"),
    ("ranges.flux=[5000,500]", "ranges.flux"),
])
def test_out_of_range_values_name_their_key(override, key):
    """Each invalid value is refused with its dotted key in the message."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_stage("simulate", "paper", [override])


def test_train_values_are_validated():
    """Training hyper-parameters outside their ranges are refused by name."""
    with pytest.raises(ConfigError, match="test_fraction"):
        TrainConfig(test_fraction=1.5)
    with pytest.raises(ConfigError, match="supervised"):
        load_stage("train", "paper", ["supervised=[flux,colour]"])
    with pytest.raises(ConfigError, match="nll_beta.*predict_variance"):
        TrainConfig(nll_beta=0.5)
    with pytest.raises(ConfigError, match="nll_beta"):
        TrainConfig(nll_beta=2.0, predict_variance=True)
    with pytest.raises(ConfigError, match="channels"):
        load_stage("train", "paper", ["channels=[]"])


def test_overrides_parse_yaml_values_into_nested_keys():
    """``key.sub=value`` sets nested values with YAML typing."""
    data = apply_overrides({"psf": {"fwhm": 0.7}}, ["psf.fwhm=0.9", "ranges.x=[10, 20]", "seed=3"])
    assert data == {"psf": {"fwhm": 0.9}, "ranges": {"x": [10, 20]}, "seed": 3}
    cfg = from_dict(SimConfig, data)
    assert cfg.psf.fwhm == 0.9 and cfg.ranges.x == (10.0, 20.0) and cfg.seed == 3


def test_malformed_override_is_refused():
    """An override without '=' is refused."""
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["n_galaxies"])


def test_config_round_trips_and_pickles():
    """Configs are immutable values: dict round trip, equality, hashing and pickling hold."""
    cfg = load_stage("simulate", "paper", ["psf.profile=moffat", "sweep.parameter=flux"])
    assert from_dict(SimConfig, to_dict(cfg)) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert hash(cfg) == hash(from_dict(SimConfig, to_dict(cfg)))
    assert eval(repr(Galaxy()), {"Galaxy": Galaxy}) == Galaxy()


def test_config_file_errors_name_the_file(tmp_path):
    """A missing config, invalid YAML or an unknown section is refused with the file name."""
    with pytest.raises(ConfigError, match="nope.yaml"):
        read_config_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulate: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        read_config_file(bad)
    bad.write_text("simulat:\n  n_galaxies: 3\n")
    with pytest.raises(ConfigError, match="unknown section 'simulat'"):
        read_config_file(bad)


def test_a_directory_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    """`galcae train survey/dataset --config survey` run where ./survey is a directory."""
    (tmp_path / "survey").mkdir()
    monkeypatch.chdir(tmp_path)
    assert "simulate" in read_config_file("survey")


def test_augmentation_refused_only_for_the_wrapping_position_angle():
    """Flips and rotations transform x, y, g1, g2 with the image; a position angle wraps."""
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(supervised=("flux", "position_angle"), log_scaled=("flux",), augment=True)
    assert TrainConfig(supervised=("flux", "g1", "x"), log_scaled=(), augment=True).augment
    with pytest.raises(ConfigError, match="'conditions'.*'seeing'"):
        TrainConfig(conditions=("seeing",))


def test_observing_conditions_take_a_value_or_a_range():
    cfg = load_stage("simulate", "paper", ["psf.profile=moffat", "psf.fwhm=[0.5, 1.2]",
                                           "noise.sky_level=[50, 2000]"])
    assert cfg.psf.fwhm == (0.5, 1.2) and cfg.psf.beta == 3.5 and cfg.varies_conditions
    one = cfg.for_galaxy({"psf_fwhm": 0.8, "psf_beta": 2.5, "sky_level": 70.0})
    assert (one.psf.fwhm, one.psf.beta, one.noise.sky_level) == (0.8, 2.5, 70.0)
    assert not one.varies_conditions
    with pytest.raises(ConfigError, match="'psf.fwhm'.*above upper end"):
        load_stage("simulate", "paper", ["psf.fwhm=[1.2, 0.5]"])
    with pytest.raises(ConfigError, match="'noise.sky_level'.*outside"):
        load_stage("simulate", "paper", ["noise.sky_level=[-1, 5]"])
