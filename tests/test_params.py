import numpy as np

from galcae.params import axis_ratio_from_ellipticity, ellipticity_from_shear, shear_from_ellipticity


def test_shear_conversion_round_trips():
    """(|g|, PA) -> (g1, g2) -> (|g|, PA) returns the inputs, PA in [0, 180)."""
    e = np.array([0.0, 0.1, 0.3, 0.6])
    pa = np.array([0.0, 45.0, 100.0, 179.0])
    e2, pa2 = ellipticity_from_shear(*shear_from_ellipticity(e, pa))
    np.testing.assert_allclose(e2, e, atol=1e-12)
    np.testing.assert_allclose(pa2[1:], pa[1:], atol=1e-9)


def test_position_angle_convention():
    """PA 0 is along +x (g1 > 0); PA 45 gives pure g2 > 0; PA 90 gives g1 < 0."""
    g1, g2 = shear_from_ellipticity([0.5, 0.5, 0.5], [0.0, 45.0, 90.0])
    np.testing.assert_allclose(g1, [0.5, 0.0, -0.5], atol=1e-12)
    np.testing.assert_allclose(g2, [0.0, 0.5, 0.0], atol=1e-12)


def test_axis_ratio():
    """|g| = (1-q)/(1+q): a round galaxy has q = 1, |g| = 1/3 has q = 1/2."""
    np.testing.assert_allclose(axis_ratio_from_ellipticity([0.0, 1 / 3]), [1.0, 0.5])
