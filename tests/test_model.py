import numpy as np
import pytest
import torch

from galcae.model import CAE, Architecture, cae_loss
from galcae.scaling import ParameterScaling, PixelNormalization


def test_architecture_is_the_papers_layer_by_layer():
    """Encoder, latent heads and decoder have the appendix's layers and shapes."""
    net = CAE(Architecture())
    convs = [m for m in net.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (3, 3)), (32, 64, (3, 3))]
    assert (net.to_phys.in_features, net.to_phys.out_features) == (16384, 2)
    assert (net.to_res.in_features, net.to_res.out_features) == (16384, 62)
    dense = net.decoder[0]
    assert (dense.in_features, dense.out_features) == (64, 16384)
    dconvs = [m for m in net.decoder if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in dconvs] == [(64, 64), (64, 32), (32, 1)]
    x = torch.rand(3, 1, 64, 64)
    z = net.encode(x)
    assert z.shape == (3, 64) and (z[:, 2:] >= 0).all()  # residual latents pass a ReLU
    out = net.decode(z)
    assert out.shape == (3, 1, 64, 64) and (out >= 0).all() and (out <= 1).all()
    # The encoder pools before its ReLUs for speed: the paper's Conv -> ReLU -> Pool order
    # gives exactly the same features.
    h = x
    for conv in convs:
        h = torch.nn.functional.max_pool2d(torch.relu(conv(h)), 2)
    assert torch.equal(net.encoder(x), h.flatten(1))


def test_loss_is_bce_plus_weighted_mse_and_l1():
    """The loss equals BCE + lambda_phys * MSE(z_phys, y) + lambda_l1 * mean|z_res| (Eq. 2-5)."""
    torch.manual_seed(0)
    net = CAE(Architecture(stamp_size=16, latent_dim=8))
    x = torch.rand(4, 1, 16, 16)
    y = torch.randn(4, 2)
    total, parts = cae_loss(net, x, y, lambda_phys=2.0, lambda_l1=0.5)
    with torch.no_grad():
        z = net.encode(x)
        bce = torch.nn.functional.binary_cross_entropy(net.decode(z), x)
        mse = ((z[:, :2] - y) ** 2).mean()
        l1 = z[:, 2:].abs().mean()
    assert total.item() == pytest.approx((bce + 2.0 * mse + 0.5 * l1).item(), rel=1e-5)
    assert parts["bce"] == pytest.approx(bce.item(), rel=1e-5)


def test_beta_nll_weighs_each_residual_by_its_predicted_variance():
    """nll_beta replaces MSE + detached NLL by stopgrad(sigma^(2 beta)) * NLL (Seitzer et al.
    2022); it needs a variance head."""
    torch.manual_seed(0)
    net = CAE(Architecture(stamp_size=16, latent_dim=8, predict_variance=True))
    x, y = torch.rand(4, 1, 16, 16), torch.randn(4, 2)
    for beta in (0.0, 0.5, 1.0):
        total, parts = cae_loss(net, x, y, lambda_phys=2.0, lambda_l1=0.5, nll_beta=beta)
        with torch.no_grad():
            logits, z, log_var = net(x)
            nll = 0.5 * (log_var + (z[:, :2] - y) ** 2 * torch.exp(-log_var))
            expected = (torch.nn.functional.binary_cross_entropy_with_logits(logits, x)
                        + 2.0 * (torch.exp(beta * log_var) * nll).mean() + 0.5 * z[:, 2:].abs().mean())
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="variance head"):
        cae_loss(CAE(Architecture(stamp_size=16, latent_dim=8)), x, y, 1.0, 1.0, nll_beta=0.5)


def test_residual_dropout_renders_from_the_supervised_latents_alone():
    """res_dropout=1 zeroes every galaxy's residual latents at the decoder's input in training
    mode (the latent terms still see them); in eval mode, and at 0, the loss is unchanged."""
    torch.manual_seed(0)
    net = CAE(Architecture(stamp_size=16, latent_dim=8))
    x, y = torch.rand(4, 1, 16, 16), torch.randn(4, 2)
    with torch.no_grad():
        z = net.encode(x)
        bce = torch.nn.functional.binary_cross_entropy(
            net.decode(torch.cat([z[:, :2], torch.zeros_like(z[:, 2:])], dim=1)), x)
        expected = bce + 2.0 * ((z[:, :2] - y) ** 2).mean() + 0.5 * z[:, 2:].abs().mean()
    net.train()
    total, parts = cae_loss(net, x, y, 2.0, 0.5, res_dropout=1.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    kept, _ = cae_loss(net, x, y, 2.0, 0.5, res_dropout=0.0)
    net.eval()
    evaluated, _ = cae_loss(net, x, y, 2.0, 0.5, res_dropout=1.0)
    assert evaluated.item() == pytest.approx(kept.item(), rel=1e-6)
    assert kept.item() != pytest.approx(total.item(), rel=1e-7, abs=0)  # zeroing changed the loss


def test_stamp_size_must_allow_two_poolings():
    """A stamp size the two 2x2 poolings cannot halve twice is refused."""
    with pytest.raises(ValueError, match="divisible by 4"):
        Architecture(stamp_size=30)
    with pytest.raises(ValueError, match="divisible by 8"):
        Architecture(stamp_size=36, channels=(8, 16, 32))


def test_deeper_encoder_and_hidden_head_are_configurations_of_the_same_network():
    """Three conv blocks are mirrored by three upsampling blocks; a hidden head layer sits
    between the features (with the conditions) and the latents; shapes stay the paper's."""
    arch = Architecture(stamp_size=32, latent_dim=12, n_supervised=3, channels=(8, 16, 32),
                        head_hidden=20, n_conditions=2, predict_variance=True)
    net = CAE(arch)
    convs = [(m.in_channels, m.out_channels) for m in net.encoder if isinstance(m, torch.nn.Conv2d)]
    dconvs = [(m.in_channels, m.out_channels) for m in net.decoder if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(1, 8), (8, 16), (16, 32)]
    assert dconvs == [(32, 32), (32, 16), (16, 8), (8, 1)]
    assert net.hidden[0].in_features == 32 * 4 * 4 + 2 and net.to_phys.in_features == 20
    x, c = torch.rand(5, 1, 32, 32), torch.randn(5, 2)
    logits, z, log_var = net(x, c)
    assert logits.shape == x.shape and z.shape == (5, 12) and log_var.shape == (5, 3)
    # The conditions reach the latents through the hidden layer.
    assert not torch.allclose(net.encode(x, c), net.encode(x, c + 1))
    assert Architecture.from_dict(arch.to_dict()) == arch


def test_pixel_normalization_keeps_absolute_flux():
    """One global stretch: a galaxy twice as bright maps to a different, brighter input,
    and the inverse recovers ADU."""
    norm = PixelNormalization.fit(np.array([[0.0, 3000.0]]), noise_sigma=10.0)
    faint = np.array([[0.0, 50.0, 500.0]])
    u_faint, u_bright = norm.forward(faint), norm.forward(2 * faint)
    assert np.all(u_bright[0, 1:] > u_faint[0, 1:])
    np.testing.assert_allclose(norm.inverse(u_faint), faint, atol=1e-6)
    assert 0.0 < norm.forward(np.array([[-30.0]]))[0, 0] < norm.forward(np.array([[0.0]]))[0, 0]
    torch_u = norm.forward(torch.as_tensor(faint))
    np.testing.assert_allclose(torch_u.numpy(), u_faint)


def test_parameter_scaling_round_trips():
    """Standardised log targets have zero mean, unit variance and invert exactly."""
    table = {"flux": np.array([500.0, 5000.0, 50000.0]), "x": np.array([1.0, 2.0, 3.0])}
    scaling = ParameterScaling.fit(table, ("flux", "x"), ("flux",))
    z = scaling.to_latent(table)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-6)
    back = scaling.to_physical(z)
    np.testing.assert_allclose(back["flux"], table["flux"], rtol=1e-5)
    assert ParameterScaling.from_dict(scaling.to_dict()) == scaling


def test_dihedral_augmentation_gives_eight_distinct_exact_copies():
    """The 8 flips/rotations permute pixels (flux kept exactly) and are all different."""
    from galcae.train import dihedral

    x = torch.rand(2, 1, 8, 8)
    copies = [dihedral(x, k) for k in range(8)]
    assert torch.equal(copies[0], x)
    assert all(torch.allclose(c.sum(dim=(-2, -1)), x.sum(dim=(-2, -1))) for c in copies)
    assert len({c.numpy().tobytes() for c in copies}) == 8
