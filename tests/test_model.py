"""The CAE network: the paper's architecture, its configurations, its loss, its decoders."""

import numpy as np
import pytest
import torch

from galcae.checkpoint import load_model
from galcae.conditions import stamp_noise_sigma
from galcae.config import ConfigError, load_stage, to_dict
from galcae.model import CAE, Architecture, cae_loss
from galcae.physics import render
from galcae.render import training_psf
from galcae.train import train_model

from conftest import SEVEN, tiny_sim, tiny_train


@pytest.fixture(scope="module")
def paper_net():
    """The paper's network, and a batch of three 64x64 inputs."""
    return CAE(Architecture()), torch.rand(3, 1, 64, 64)


def _convs(layers):
    return [m for m in layers if isinstance(m, torch.nn.Conv2d)]


def test_encoder_is_the_papers_two_conv_blocks(paper_net):
    """Two 3x3 convolutions, 1 -> 32 -> 64 channels."""
    net, _ = paper_net
    assert ([(c.in_channels, c.out_channels, c.kernel_size) for c in _convs(net.encoder)]
            == [(1, 32, (3, 3)), (32, 64, (3, 3))])


def test_latent_heads_are_the_papers(paper_net):
    """Dense heads from the 16384 features to 2 supervised and 62 residual latents."""
    net, _ = paper_net
    assert (net.to_phys.in_features, net.to_phys.out_features) == (16384, 2)
    assert (net.to_res.in_features, net.to_res.out_features) == (16384, 62)


def test_decoder_is_the_papers(paper_net):
    """A dense layer from 64 latents to 16384 features, then convolutions 64 -> 64 -> 32 -> 1."""
    net, _ = paper_net
    dense = net.decoder[0]
    assert (dense.in_features, dense.out_features) == (64, 16384)
    assert [(c.in_channels, c.out_channels) for c in _convs(net.decoder)] == [(64, 64), (64, 32), (32, 1)]


def test_encoding_gives_64_latents_with_non_negative_residuals(paper_net):
    """64 latents per image; the residual latents pass a ReLU."""
    net, x = paper_net
    z = net.encode(x)
    assert z.shape == (3, 64) and (z[:, 2:] >= 0).all()


def test_decoding_gives_images_in_0_1(paper_net):
    """The decoder's sigmoid output is an image of the input's shape within [0, 1]."""
    net, x = paper_net
    out = net.decode(net.encode(x))
    assert out.shape == (3, 1, 64, 64) and (out >= 0).all() and (out <= 1).all()


def test_pooling_before_relu_gives_the_papers_features(paper_net):
    """Pooling before the ReLUs (for speed) gives exactly the paper's Conv -> ReLU -> Pool features."""
    net, x = paper_net
    h = x
    for conv in _convs(net.encoder):
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


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_beta_nll_weighs_each_residual_by_its_predicted_variance(beta):
    """nll_beta replaces MSE + detached NLL by stopgrad(sigma^(2 beta)) * NLL (Seitzer et al. 2022)."""
    torch.manual_seed(0)
    net = CAE(Architecture(stamp_size=16, latent_dim=8, predict_variance=True))
    x, y = torch.rand(4, 1, 16, 16), torch.randn(4, 2)
    total, parts = cae_loss(net, x, y, lambda_phys=2.0, lambda_l1=0.5, nll_beta=beta)
    with torch.no_grad():
        logits, z, log_var = net(x)
        nll = 0.5 * (log_var + (z[:, :2] - y) ** 2 * torch.exp(-log_var))
        expected = (torch.nn.functional.binary_cross_entropy_with_logits(logits, x)
                    + 2.0 * (torch.exp(beta * log_var) * nll).mean() + 0.5 * z[:, 2:].abs().mean())
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_beta_nll_needs_a_variance_head():
    """nll_beta on a network without a variance head is refused."""
    x, y = torch.rand(4, 1, 16, 16), torch.randn(4, 2)
    with pytest.raises(ValueError, match="variance head"):
        cae_loss(CAE(Architecture(stamp_size=16, latent_dim=8)), x, y, 1.0, 1.0, nll_beta=0.5)


def _small_net():
    torch.manual_seed(0)
    net = CAE(Architecture(stamp_size=16, latent_dim=8))
    return net, torch.rand(4, 1, 16, 16), torch.randn(4, 2)


def test_residual_dropout_renders_from_the_supervised_latents_alone():
    """res_dropout=1 in training zeroes the residual latents at the decoder's input only."""
    # The latent terms of the loss still see them.
    net, x, y = _small_net()
    with torch.no_grad():
        z = net.encode(x)
        bce = torch.nn.functional.binary_cross_entropy(
            net.decode(torch.cat([z[:, :2], torch.zeros_like(z[:, 2:])], dim=1)), x)
        expected = bce + 2.0 * ((z[:, :2] - y) ** 2).mean() + 0.5 * z[:, 2:].abs().mean()
    net.train()
    total, parts = cae_loss(net, x, y, 2.0, 0.5, res_dropout=1.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_residual_dropout_is_off_in_eval_mode():
    """In eval mode res_dropout=1 gives the loss of res_dropout=0 in training mode."""
    net, x, y = _small_net()
    net.train()
    kept, _ = cae_loss(net, x, y, 2.0, 0.5, res_dropout=0.0)
    net.eval()
    evaluated, _ = cae_loss(net, x, y, 2.0, 0.5, res_dropout=1.0)
    assert evaluated.item() == pytest.approx(kept.item(), rel=1e-6)


def test_residual_dropout_changes_the_training_loss():
    """Zeroing the residual latents in training mode changes the loss (the check above is not vacuous)."""
    net, x, y = _small_net()
    net.train()
    total, _ = cae_loss(net, x, y, 2.0, 0.5, res_dropout=1.0)
    kept, _ = cae_loss(net, x, y, 2.0, 0.5, res_dropout=0.0)
    assert kept.item() != pytest.approx(total.item(), rel=1e-7, abs=0)


def test_dropout_on_each_free_latent_drops_some_and_scales_the_others():
    """res_dropout_each: each free latent zeroed on its own, the kept ones scaled by 1 / (1 - p)."""
    net, x, y = _small_net()
    net.train()
    seen, decode = {}, net.decode_logits

    def spy(z, c=None):  # the latents the decoder is given
        seen["z"] = z
        return decode(z, c)

    net.decode_logits = spy
    torch.manual_seed(1)
    cae_loss(net, x, y, 2.0, 0.5, res_dropout=0.5, res_dropout_each=True)
    with torch.no_grad():
        free = net.encode(x)[:, 2:]
    dropped = seen["z"][:, 2:]
    kept = dropped != 0
    assert 0 < kept.sum() < (free != 0).sum()
    torch.testing.assert_close(dropped[kept], 2 * free[kept])


@pytest.mark.parametrize("changes, message", [
    ({"stamp_size": 30}, "divisible by 4"),
    ({"stamp_size": 36, "channels": (8, 16, 32)}, "divisible by 8"),
    ({"stamp_size": 36, "residual_channels": (8, 16, 32)}, "divisible by 8, as 3 residual_channels"),
], ids=["two_poolings", "three_poolings", "three_residual_blocks"])
def test_stamp_size_must_allow_the_poolings(changes, message):
    """A stamp size the 2x2 poolings (one per conv block) cannot halve evenly is refused."""
    with pytest.raises(ValueError, match=message):
        Architecture(**changes)


DEEP = dict(stamp_size=32, latent_dim=12, n_supervised=3, channels=(8, 16, 32), head_hidden=20,
            n_conditions=2, predict_variance=True)


@pytest.fixture(scope="module")
def deep_net():
    return CAE(Architecture(**DEEP))


def test_three_conv_blocks_are_mirrored_by_three_upsampling_blocks(deep_net):
    """channels=(8, 16, 32): three encoder convolutions, mirrored by the decoder's."""
    convs = [(m.in_channels, m.out_channels) for m in _convs(deep_net.encoder)]
    dconvs = [(m.in_channels, m.out_channels) for m in _convs(deep_net.decoder)]
    assert convs == [(1, 8), (8, 16), (16, 32)]
    assert dconvs == [(32, 32), (32, 16), (16, 8), (8, 1)]


def test_hidden_head_layer_sits_between_features_with_conditions_and_latents(deep_net):
    """head_hidden adds a layer fed the features and the conditions; the latent heads read it."""
    assert deep_net.hidden[0].in_features == 32 * 4 * 4 + 2 and deep_net.to_phys.in_features == 20


def test_deeper_network_keeps_the_papers_output_shapes(deep_net):
    """Logits of the input's shape, all latents, one log-variance per supervised latent."""
    x, c = torch.rand(5, 1, 32, 32), torch.randn(5, 2)
    logits, z, log_var = deep_net(x, c)
    assert logits.shape == x.shape and z.shape == (5, 12) and log_var.shape == (5, 3)


def test_conditions_reach_the_latents_through_the_hidden_layer(deep_net):
    """Other conditions, the same image: other latents."""
    x, c = torch.rand(5, 1, 32, 32), torch.randn(5, 2)
    assert not torch.allclose(deep_net.encode(x, c), deep_net.encode(x, c + 1))


def test_architecture_round_trips_through_a_dict():
    """``Architecture.from_dict(arch.to_dict())`` is the same architecture."""
    arch = Architecture(**DEEP)
    assert Architecture.from_dict(arch.to_dict()) == arch


def test_an_architecture_saved_before_the_residual_fields_loads_as_it_was_built():
    """A model.json without residual_channels, residual_conditions and decoder_grid (the
    models up to survey-v2) rebuilds the decoder those models have."""
    saved = {k: v for k, v in Architecture(**DEEP, decoder="sersic").to_dict().items()
             if k not in ("residual_channels", "residual_conditions", "decoder_grid")}
    arch = Architecture.from_dict(saved)
    assert arch.residual_widths == DEEP["channels"] and arch.residual_conditions and arch.decoder_grid == 4
    assert Architecture.from_dict(Architecture(**DEEP, residual_channels=(4, 8, 16)).to_dict()).residual_channels \
        == (4, 8, 16)


@pytest.mark.parametrize("conditioned", [True, False], ids=["conditioned", "unconditioned"])
def test_the_residual_branch_adds_nothing_without_free_latents(conditioned):
    """The sersic decoder's residual is zero where the free latents are, for any conditions
    and widths, and not elsewhere; narrower widths and no conditions shape the branch."""
    torch.manual_seed(0)
    net = CAE(Architecture(**{**DEEP, "residual_channels": (4, 8, 8)}, decoder="sersic",
                           residual_conditions=conditioned))
    torch.nn.init.normal_(net.decoder[-1].weight)  # not the zero it starts at
    net.renderer = lambda z_phys, c, residual: residual  # the branch alone
    assert [(m.in_channels, m.out_channels) for m in _convs(net.decoder)] == [(8, 8), (8, 8), (8, 4), (4, 1)]
    assert net.decoder[0].in_features == 9 + (2 if conditioned else 0)
    z, c = torch.rand(5, 12) + 0.1, torch.randn(5, 2)
    z[:2, 3:] = 0
    residual = net.decode_logits(z, c)
    assert residual[:2].abs().max() < 1e-6 and residual[2:].abs().amax(dim=(1, 2, 3)).min() > 0


def test_residual_dropout_starts_where_its_schedule_says():
    """res_dropout_from 0.5 of 10 epochs: off for epochs 0-4, on from 5."""
    from galcae.config import TrainConfig
    from galcae.train import residual_dropout

    cfg = TrainConfig(epochs=10, res_dropout=0.8, res_dropout_from=0.5)
    assert [residual_dropout(cfg, e) for e in range(10)] == [0.0] * 5 + [0.8] * 5
    assert residual_dropout(TrainConfig(res_dropout=0.3), 0) == 0.3


@pytest.fixture(scope="module")
def conditioned_net():
    torch.manual_seed(0)
    net = CAE(Architecture(stamp_size=32, latent_dim=16, n_supervised=7, n_conditions=3,
                           predict_variance=True)).eval()
    return net, torch.zeros(2, 3), torch.tensor([[2.0, 0, 0], [2.0, 0, 0]])


def test_conditions_enter_the_decoder(conditioned_net):
    """The same latents decode to another image under other seeing."""
    net, good, bad_seeing = conditioned_net
    z = torch.randn(2, 16)
    assert not torch.allclose(net.decode(z, good), net.decode(z, bad_seeing))


def test_conditions_enter_the_heads(conditioned_net):
    """The same image gives other latents and other variances under other seeing."""
    net, good, bad_seeing = conditioned_net
    x = torch.rand(2, 1, 32, 32)
    (z1, v1), (z2, v2) = net.heads(net.encoder(x), good), net.heads(net.encoder(x), bad_seeing)
    assert not torch.allclose(z1, z2) and not torch.allclose(v1, v2) and v1.shape == (2, 7)


def test_conditioned_decoder_refuses_to_decode_without_conditions(conditioned_net):
    """Decoding without the conditions the network takes is refused, naming how many it needs."""
    net, _, _ = conditioned_net
    with pytest.raises(ValueError, match="conditioned on 3"):
        net.decode(torch.randn(2, 16))


# --- the physical (sersic) decoder ----------------------------------------------------------------


def galaxy(net, z: torch.Tensor, c: torch.Tensor) -> np.ndarray:
    """The decoder's Sérsic galaxy in ADU, without the residual."""
    return net.renderer.galaxy(z[:, :7], c).numpy()


@pytest.fixture(scope="module")
def sersic(sersic_run, survey_dataset):
    """The Sérsic-decoder model, four survey stamps, their conditions, latents and network inputs."""
    model = load_model(sersic_run.path, device="cpu")
    images = survey_dataset.load_images()[:4]
    conditions = {k: survey_dataset.params[k][:4] for k in ("psf_fwhm", "psf_beta")}
    conditions["noise_sigma"] = stamp_noise_sigma(images)
    z = torch.as_tensor(model.encode(images, conditions))
    c = torch.as_tensor(model.condition_input(images, conditions))
    return model, conditions, z, c


def _moved(z):
    """The latents with flux up and g1 down."""
    moved = z.clone()
    moved[:, 0] += 0.5  # flux
    moved[:, 3] -= 0.3  # g1
    return moved


def test_sersic_decoder_moves_only_the_physical_image(sersic):
    """Moving supervised latents changes the decoded image by the renderer's change alone."""
    # The residual light depends on the free latents only.
    model, conditions, z, c = sersic
    net = model.network
    moved = _moved(z)
    with torch.no_grad():
        residual_light = model.decode(z.numpy(), conditions) - galaxy(net, z, c)
        decoded = model.decode(moved.numpy(), conditions)
        assert np.abs(decoded - galaxy(net, moved, c) - residual_light).max() < 1e-5 * decoded.max() + 0.01


def test_sersic_decoder_without_free_latents_draws_galsims_galaxy(sersic):
    """With the free latents at zero the decoded image is GalSim's galaxy of the latents' parameters."""
    model, conditions, z, _ = sersic
    moved = _moved(z)
    moved[:, 7:] = 0  # no residual light without free latents
    decoded = model.decode(moved.numpy(), conditions)
    cfg = load_stage("simulate", "paper", ["stamp_size=32", "psf.profile=moffat"])
    physical = model.scaling.to_physical(moved[:, :7].numpy())
    for i in range(4):
        theta = {k: float(v[i]) for k, v in physical.items()}
        expected = render(cfg.for_galaxy({k: conditions[k][i] for k in conditions}), theta)
        assert np.abs(decoded[i] - expected).max() < 5e-3 * expected.max() + 0.05, i


def test_a_linear_pixel_stretch_is_one_scale_for_every_pixel():
    """`pixel_stretch: linear` maps ADU to [0, 1] along a straight line and back; both stretches
    keep the sky noise they were fitted with (the figures' scale)."""
    from galcae.scaling import PixelNormalization

    images = np.random.default_rng(0).normal(0, 10, (4, 8, 8))
    images[0, 4, 4] = 5000
    linear = PixelNormalization.fit(images, 10.0, "linear")
    u = linear.forward(np.array([0.0, 1000.0, 2000.0, 4000.0]))
    np.testing.assert_allclose(np.diff(u), [u[1] - u[0], u[1] - u[0], 2 * (u[1] - u[0])], rtol=1e-6)
    np.testing.assert_allclose(linear.inverse(linear.forward(np.array([-20.0, 0.0, 4000.0]))),
                               [-20.0, 0.0, 4000.0], atol=1e-3)
    for stretch in ("asinh", "linear"):
        assert PixelNormalization.fit(images, 10.0, stretch).noise_sigma == pytest.approx(10.0)


def test_the_psf_a_sersic_decoder_draws_through_comes_from_its_training_set():
    """Left out of the conditions, the PSF is the training set's one: a Gaussian's FWHM (no
    beta), a Moffat's FWHM and beta; one that varies over the set must be a condition."""
    paper = to_dict(load_stage("simulate", "paper"))
    assert training_psf(paper, ()) == {"psf_fwhm": 0.7, "psf_beta": None}
    moffat = to_dict(load_stage("simulate", "paper", ["psf.profile=moffat", "psf.beta=2.5"]))
    assert training_psf(moffat, ()) == {"psf_fwhm": 0.7, "psf_beta": 2.5}
    survey = to_dict(load_stage("simulate", "survey"))
    assert training_psf(survey, ("psf_fwhm", "psf_beta")) == {}
    with pytest.raises(ValueError, match="psf.fwhm is .*not one value: add psf_fwhm to the conditions"):
        training_psf(survey, ("psf_beta",))


def test_an_unconditioned_sersic_decoder_draws_galsims_galaxy_through_the_sets_psf(tiny_dataset, tmp_path):
    """Trained on one Gaussian PSF without conditions (the paper's data), the sersic decoder
    with no free latents draws what GalSim draws through that PSF."""
    model = train_model(tiny_dataset.path, tmp_path / "run", tiny_train(decoder="sersic", supervised=SEVEN))
    model = load_model(tmp_path / "run", device="cpu")
    assert model.conditions == ()
    z = model.encode(tiny_dataset.load_images()[:3])
    z[:, 7:] = 0
    decoded = model.decode(z)
    cfg = tiny_sim()
    physical = model.scaling.to_physical(z[:, :7])
    for i in range(3):
        expected = render(cfg, {k: float(v[i]) for k, v in physical.items()})
        assert np.abs(decoded[i] - expected).max() < 5e-3 * expected.max() + 0.05, i


def test_a_sersic_decoder_on_a_varying_psf_needs_it_as_a_condition(survey_dataset, tmp_path):
    """On galaxies seen through different PSFs, an unconditioned sersic decoder is refused
    before training, naming the dataset and the condition to add."""
    with pytest.raises(ConfigError, match=f"decoder: dataset {survey_dataset.path}.*add psf_fwhm to the conditions"):
        train_model(survey_dataset.path, tmp_path / "run", tiny_train(decoder="sersic", supervised=SEVEN))
