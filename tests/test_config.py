import pytest

from galcae.config import (
    ConfigError,
    Galaxy,
    Ranges,
    SimConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_stage,
    read_config_file,
    to_dict,
)

from conftest import SEVEN


def test_paper_simulate_preset_is_table_1():
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


def test_paper_train_preset_is_the_papers_training():
    """The paper preset trains 100 epochs in batches of 64 on flux and r½, holding out 1/11."""
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


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(test_fraction=1.5), "test_fraction"),
    (lambda: load_stage("train", "paper", ["supervised=[flux,colour]"]), "supervised"),
    (lambda: TrainConfig(nll_beta=0.5), "nll_beta.*predict_variance"),
    (lambda: TrainConfig(nll_beta=2.0, predict_variance=True), "nll_beta"),
    (lambda: load_stage("train", "paper", ["channels=[]"]), "channels"),
    (lambda: load_stage("train", "paper", ["pixel_stretch=log"]), "pixel_stretch"),
    (lambda: load_stage("train", "survey", ["pixel_stretch=linear"]), "pixel_stretch.*sersic"),
    (lambda: load_stage("train", "survey", ["residual_channels=[0,8,16]"]), "residual_channels"),
    (lambda: load_stage("train", "survey", ["decoder_grid=1"]), "decoder_grid"),
    (lambda: load_stage("train", "paper", ["res_dropout_from=1"]), "res_dropout_from"),
], ids=["test_fraction", "supervised", "nll_beta_without_variance", "nll_beta_above_1", "channels",
        "pixel_stretch", "linear_stretch_with_sersic_decoder", "residual_channels", "decoder_grid",
        "res_dropout_from"])
def test_train_values_are_validated(make, message):
    """Training hyper-parameters outside their ranges are refused by name."""
    with pytest.raises(ConfigError, match=message):
        make()


def test_overrides_parse_yaml_values_into_nested_keys():
    """``key.sub=value`` sets nested values with YAML typing."""
    data = apply_overrides({"psf": {"fwhm": 0.7}}, ["psf.fwhm=0.9", "ranges.x=[10, 20]", "seed=3"])
    assert data == {"psf": {"fwhm": 0.9}, "ranges": {"x": [10, 20]}, "seed": 3}


def test_from_dict_builds_the_typed_config_of_overrides():
    """The overridden plain data becomes a config with its values typed (lists as float tuples)."""
    data = apply_overrides({"psf": {"fwhm": 0.7}}, ["psf.fwhm=0.9", "ranges.x=[10, 20]", "seed=3"])
    cfg = from_dict(SimConfig, data)
    assert cfg.psf.fwhm == 0.9 and cfg.ranges.x == (10.0, 20.0) and cfg.seed == 3


def test_malformed_override_is_refused():
    """An override without '=' is refused."""
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["n_galaxies"])


def _moffat_sweep():
    return load_stage("simulate", "paper", ["psf.profile=moffat", "sweep.parameter=flux"])


def test_config_round_trips_through_a_dict():
    """``from_dict(to_dict(cfg))`` gives back an equal config (pickling: test_pickling.py)."""
    cfg = _moffat_sweep()
    assert from_dict(SimConfig, to_dict(cfg)) == cfg


def test_equal_configs_hash_alike():
    """Configs are immutable values: equal ones have equal hashes."""
    cfg = _moffat_sweep()
    assert hash(cfg) == hash(from_dict(SimConfig, to_dict(cfg)))


def test_config_repr_evaluates_to_an_equal_config():
    """A section's repr is Python that rebuilds it."""
    assert eval(repr(Galaxy()), {"Galaxy": Galaxy}) == Galaxy()


def test_missing_config_file_names_the_file(tmp_path):
    """A config file that does not exist is refused with its name."""
    with pytest.raises(ConfigError, match="nope.yaml"):
        read_config_file(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_file(tmp_path):
    """A config file that is not valid YAML is refused with its name."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulate: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        read_config_file(bad)


def test_unknown_section_is_refused_by_name(tmp_path):
    """A config file with a misspelt stage section is refused naming the section."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulat:\n  n_galaxies: 3\n")
    with pytest.raises(ConfigError, match="unknown section 'simulat'"):
        read_config_file(bad)


def test_a_directory_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    """`galcae train survey/dataset --config survey` run where ./survey is a directory."""
    (tmp_path / "survey").mkdir()
    monkeypatch.chdir(tmp_path)
    assert "simulate" in read_config_file("survey")


def test_augmentation_is_refused_for_the_wrapping_position_angle():
    """A position angle wraps under flips and rotations: augmenting with it supervised is refused."""
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(supervised=("flux", "position_angle"), log_scaled=("flux",), augment=True)


def test_augmentation_is_accepted_for_parameters_that_transform_with_the_image():
    """Flips and rotations transform x, y, g1, g2 with the image: augmenting is accepted."""
    assert TrainConfig(supervised=("flux", "g1", "x"), log_scaled=(), augment=True).augment


def test_unknown_condition_is_refused_by_name():
    """A condition the models cannot take is refused naming the key and the value."""
    with pytest.raises(ConfigError, match="'conditions'.*'seeing'"):
        TrainConfig(conditions=("seeing",))


def test_sersic_decoder_needs_all_seven_parameters_supervised():
    """The physical decoder renders a galaxy: it needs its seven parameters supervised (the
    PSF comes from the conditions or the training set, checked when training starts)."""
    with pytest.raises(ConfigError, match="decoder.*add sersic_n, g1, g2, x, y to supervised"):
        TrainConfig(decoder="sersic", supervised=("flux", "half_light_radius"))
    TrainConfig(decoder="sersic", supervised=SEVEN)  # no PSF conditions: one PSF in the set


def test_unknown_decoder_is_refused():
    """A decoder that is neither conv nor sersic is refused naming it."""
    with pytest.raises(ConfigError, match="decoder.*'gan' is not one of"):
        TrainConfig(decoder="gan")


def _varying_conditions():
    return load_stage("simulate", "paper", ["psf.profile=moffat", "psf.fwhm=[0.5, 1.2]",
                                            "noise.sky_level=[50, 2000]"])


def test_observing_conditions_take_a_range():
    """A condition given as [lo, hi] is drawn per galaxy; one given as a value stays fixed."""
    cfg = _varying_conditions()
    assert cfg.psf.fwhm == (0.5, 1.2) and cfg.psf.beta == 3.5 and cfg.varies_conditions


def test_for_galaxy_fixes_the_conditions_of_one_galaxy():
    """``for_galaxy`` gives the config of one galaxy's drawn conditions, which no longer vary."""
    one = _varying_conditions().for_galaxy({"psf_fwhm": 0.8, "psf_beta": 2.5, "sky_level": 70.0})
    assert (one.psf.fwhm, one.psf.beta, one.noise.sky_level) == (0.8, 2.5, 70.0)
    assert not one.varies_conditions


def test_reversed_condition_range_is_refused():
    """A condition range whose lower end is above its upper end is refused by key."""
    with pytest.raises(ConfigError, match="'psf.fwhm'.*above upper end"):
        load_stage("simulate", "paper", ["psf.fwhm=[1.2, 0.5]"])


def test_condition_range_outside_its_bounds_is_refused():
    """A condition range reaching outside the physical bounds (negative sky) is refused by key."""
    with pytest.raises(ConfigError, match="'noise.sky_level'.*outside"):
        load_stage("simulate", "paper", ["noise.sky_level=[-1, 5]"])
