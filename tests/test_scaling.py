"""Fixed transforms between physical units and what the network sees."""

import numpy as np
import pytest
import torch

from galcae.scaling import ParameterScaling, PixelNormalization


@pytest.fixture(scope="module")
def norm():
    return PixelNormalization.fit(np.array([[0.0, 3000.0]]), noise_sigma=10.0)


FAINT = np.array([[0.0, 50.0, 500.0]])


def test_pixel_normalization_keeps_absolute_flux(norm):
    """One global stretch: a galaxy twice as bright maps to a different, brighter input."""
    u_faint, u_bright = norm.forward(FAINT), norm.forward(2 * FAINT)
    assert np.all(u_bright[0, 1:] > u_faint[0, 1:])


def test_pixel_normalization_inverse_recovers_adu(norm):
    """The inverse of the stretch gives back the ADU values."""
    np.testing.assert_allclose(norm.inverse(norm.forward(FAINT)), FAINT, atol=1e-6)


def test_pixel_normalization_keeps_negative_noise_above_0(norm):
    """A pixel a few sigma below the sky maps inside (0, 1), below the sky's value."""
    assert 0.0 < norm.forward(np.array([[-30.0]]))[0, 0] < norm.forward(np.array([[0.0]]))[0, 0]


def test_pixel_normalization_of_torch_is_that_of_numpy(norm):
    """The stretch of a torch tensor equals that of the numpy array."""
    torch_u = norm.forward(torch.as_tensor(FAINT))
    np.testing.assert_allclose(torch_u.numpy(), norm.forward(FAINT))


TABLE = {"flux": np.array([500.0, 5000.0, 50000.0]), "x": np.array([1.0, 2.0, 3.0])}


@pytest.fixture(scope="module")
def scaling():
    return ParameterScaling.fit(TABLE, ("flux", "x"), ("flux",))


def test_parameter_scaling_standardises_the_targets(scaling):
    """Standardised (log for flux) targets have zero mean and unit variance."""
    z = scaling.to_latent(TABLE)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-6)


def test_parameter_scaling_inverts_exactly(scaling):
    """``to_physical(to_latent(t))`` gives back the physical values."""
    back = scaling.to_physical(scaling.to_latent(TABLE))
    np.testing.assert_allclose(back["flux"], TABLE["flux"], rtol=1e-5)


def test_parameter_scaling_round_trips_through_a_dict(scaling):
    """``from_dict(to_dict())`` is the same scaling."""
    assert ParameterScaling.from_dict(scaling.to_dict()) == scaling
