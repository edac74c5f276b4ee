"""Realistic populations: COSMOS shapes, the counts' flux law, bulge + disk galaxies and their
single-Sérsic equivalents, and detector defects in training."""

from types import SimpleNamespace

import numpy as np
import pytest

from galcae.catalog.segment import bad_pixel_masks
from galcae.config import ConfigError, load_stage
from galcae.physics import galaxy_model, make_psf
from galcae.population import cosmos_shapes, draw_flux, draw_shapes
from galcae.simulate import draw_parameters, render_chunk
from galcae.train import _check_fresh


def realistic(*extra):
    return load_stage("simulate", "realistic", ["n_galaxies=4000", *extra])


def test_cosmos_shapes_stay_inside_the_ranges_and_keep_the_real_distribution():
    """Drawn shapes lie inside the ranges, and their median n and r½ are the in-range COSMOS
    galaxies' (the smoothing moves galaxies, not the distribution)."""
    cfg = realistic()
    drawn = draw_shapes(np.random.default_rng(0), 20000, cfg.ranges, smoothing=0.5)
    for name in ("sersic_n", "half_light_radius", "ellipticity"):
        lo, hi = getattr(cfg.ranges, name)
        assert drawn[name].min() >= lo and drawn[name].max() <= hi
    real = cosmos_shapes()
    inside = (real[:, 0] >= 0.5) & (real[:, 0] <= 5) & (real[:, 1] >= 0.15) & (real[:, 1] <= 3)
    assert np.median(drawn["sersic_n"]) == pytest.approx(np.median(real[inside, 0]), rel=0.1)
    assert np.median(drawn["half_light_radius"]) == pytest.approx(np.median(real[inside, 1]), rel=0.1)
    assert np.mean(drawn["sersic_n"] < 2) > 0.6  # a uniform n over 0.5-5 puts a third there


def test_flux_follows_the_counts_power_law():
    """dN/dlnF ∝ F^-0.5 on 300-3e5 puts the analytic share of galaxies in the brightest
    decade (a third under a log-uniform draw, slope 0)."""
    flux = draw_flux(np.random.default_rng(1), 200000, (300.0, 3e5), 0.5)
    assert flux.min() >= 300 and flux.max() <= 3e5
    # P(F > 3e4) = (3e4^-0.5 - 3e5^-0.5) / (300^-0.5 - 3e5^-0.5)
    expected = (3e4**-0.5 - 3e5**-0.5) / (300**-0.5 - 3e5**-0.5)
    assert np.mean(flux > 3e4) == pytest.approx(expected, abs=0.003)
    assert np.mean(draw_flux(np.random.default_rng(1), 200000, (300.0, 3e5), 0.0) > 3e4) == pytest.approx(
        1 / 3, abs=0.005)


def test_bulges_are_drawn_in_their_fraction_with_a_disk_and_the_total_flux():
    """30 % of the galaxies are bulge + disk; the others have no bulge columns."""
    table = draw_parameters(realistic())
    bulgy = table["bulge_to_total"] > 0
    assert 0.27 < bulgy.mean() < 0.33
    assert np.all(np.isnan(table["bulge_half_light_radius"][~bulgy]))
    assert np.all(table["sersic_n"][bulgy] == 1.0)  # the disk, until the image defines the equivalent
    np.testing.assert_array_equal(table["flux_total"], table["flux"])


def test_a_bulge_plus_disk_is_drawn_from_its_components():
    """GalSim draws a bulge + disk row as its two components (total flux kept), not as the
    single Sérsic of its supervised columns."""
    cfg = realistic()
    row = {k: v[0] for k, v in draw_parameters(realistic("n_galaxies=1")).items()}
    row.update(bulge_to_total=0.5, bulge_half_light_radius=0.2, bulge_sersic_n=4.0, bulge_ellipticity=0.1,
               bulge_position_angle=10.0, disk_half_light_radius=1.0, disk_ellipticity=0.3,
               disk_position_angle=20.0, sersic_n=1.0, half_light_radius=1.0, flux=1e4, flux_total=1e4)
    psf = make_psf(cfg.for_galaxy(row))
    two = galaxy_model(cfg, row, psf)
    one = galaxy_model(cfg, {**row, "bulge_to_total": 0.0}, psf)
    assert two.flux == pytest.approx(1e4)
    assert two.xValue(0, 0) > 1.5 * one.xValue(0, 0)  # the bulge's core


def test_a_faint_bulge_gives_the_disks_parameters_as_its_supervised_ones():
    """The supervised parameters of a bulge + disk are its single-Sérsic fit: with 1 % of the
    light in the bulge that is the exponential disk itself."""
    cfg = realistic("n_galaxies=4", "neighbours.fraction=0")
    rows = draw_parameters(cfg)
    rows.update(bulge_to_total=np.full(4, 0.01), bulge_half_light_radius=np.full(4, 0.3),
                bulge_sersic_n=np.full(4, 4.0), bulge_ellipticity=np.zeros(4), bulge_position_angle=np.zeros(4),
                disk_half_light_radius=np.array([0.4, 0.7, 1.0, 1.5]), disk_ellipticity=np.full(4, 0.3),
                disk_position_angle=np.array([0.0, 30.0, 60.0, 120.0]), sersic_n=np.ones(4),
                flux=np.full(4, 5e4), flux_total=np.full(4, 5e4))
    out = render_chunk(cfg, rows)
    assert list(out["status"]) == ["ok"] * 4
    np.testing.assert_allclose(out["sersic_n"], 1.0, atol=0.12)
    np.testing.assert_allclose(out["half_light_radius"], rows["disk_half_light_radius"], rtol=0.04)
    np.testing.assert_allclose(out["flux"], 5e4, rtol=0.01)
    np.testing.assert_allclose(out["ellipticity"], 0.3, atol=0.03)


def test_a_strong_bulge_raises_the_equivalent_sersic_index():
    """Half the light in an n = 4 bulge: the single Sérsic that fits it has n well above 1."""
    cfg = realistic("n_galaxies=2", "neighbours.fraction=0")
    rows = draw_parameters(cfg)
    rows.update(bulge_to_total=np.full(2, 0.5), bulge_half_light_radius=np.full(2, 0.25),
                bulge_sersic_n=np.full(2, 4.0), bulge_ellipticity=np.zeros(2), bulge_position_angle=np.zeros(2),
                disk_half_light_radius=np.full(2, 1.0), disk_ellipticity=np.full(2, 0.2),
                disk_position_angle=np.zeros(2), sersic_n=np.ones(2), flux=np.full(2, 5e4), flux_total=np.full(2, 5e4))
    out = render_chunk(cfg, rows)
    assert np.all(out["sersic_n"] > 2.0)
    assert np.all(out["half_light_radius"] < 1.0)


@pytest.mark.parametrize("override, key", [
    ("population.kind=sdss", "population.kind"),
    ("population.bulge_fraction=1.5", "population.bulge_fraction"),
    ("population.bulge_to_total=[0.8,0.2]", "population.bulge_to_total"),
])
def test_bad_population_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        realistic(override)


def test_a_flux_slope_needs_the_cosmos_population():
    """A uniform population draws flux over its range: a flux_slope would be silently ignored."""
    with pytest.raises(ConfigError, match="population.flux_slope"):
        load_stage("simulate", "survey", ["population.flux_slope=0.5"])


def test_a_sweep_with_bulges_is_refused():
    with pytest.raises(ConfigError, match="population.bulge_fraction"):
        load_stage("simulate", "paper", ["sweep.parameter=flux", "population.bulge_fraction=0.3"])


def test_fresh_galaxies_refuse_a_dataset_with_bulges():
    """The PyTorch renderer draws single Sérsics: fresh galaxies of a bulge + disk population
    would be the wrong galaxies."""
    dataset = SimpleNamespace(config=realistic(), path="data")
    cfg = load_stage("train", "realistic", ["fresh_galaxies=true"])
    with pytest.raises(ConfigError, match="bulge"):
        _check_fresh(dataset, cfg)


def test_bad_pixels_need_masking():
    with pytest.raises(ConfigError, match="bad_pixels"):
        load_stage("train", "survey", ["bad_pixels=0.2"])


def test_bad_pixel_masks_mark_their_share_of_stamps():
    """A fraction of the stamps get one defect (a few to a few hundred pixels); none draws nothing."""
    rng = np.random.default_rng(3)
    masks = bad_pixel_masks(2000, 64, 0.2, rng)
    hit = masks.any(axis=(1, 2))
    assert 0.17 < hit.mean() < 0.23
    counts = masks[hit].sum(axis=(1, 2))
    assert counts.min() >= 1 and counts.max() <= 64 * 2 + 400
