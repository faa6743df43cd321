import copy

import pytest
import torch

from seedstory.models.detokenizer import ConditionAdapter, build_detokenizer, latent_scaling_factor, noise_scheduler
from seedstory.models.export import export_vae
from seedstory.models.weights import WeightsError


@pytest.fixture(scope="module")
def detokenizer(tiny):
    torch.manual_seed(0)
    return build_detokenizer(tiny)


def features(config, batch=2, seed=0):
    return torch.randn(batch, config.vit.num_queries, config.vit.output_dim, generator=torch.Generator().manual_seed(seed))


def test_condition_shapes(detokenizer, tiny):
    hidden, pooled, spatial = detokenizer.conditions(features(tiny))
    assert hidden.shape == (2, tiny.condition_adapter.num_tokens, tiny.unet.cross_attention_dim)
    assert pooled.shape == (2, tiny.unet.pooled_dim)
    assert spatial is None and detokenizer.unet.config.in_channels == tiny.vae.latent_channels
    assert detokenizer.time_ids(2).tolist() == [[64, 64, 0, 0, 64, 64]] * 2


def test_loss_is_finite_and_reproducible(detokenizer, tiny):
    pixels = torch.rand(2, 3, tiny.sd_image_size, tiny.sd_image_size) * 2 - 1
    first = detokenizer.loss(pixels, features(tiny), generator=torch.Generator().manual_seed(1))
    second = detokenizer.loss(pixels, features(tiny), generator=torch.Generator().manual_seed(1))
    assert first.dim() == 0 and torch.isfinite(first)
    assert first.item() == second.item()
    with pytest.raises(ValueError, match=r"pixel_values must be \[K, 3, 64, 64\]"):
        detokenizer.loss(pixels[:, :, :32, :32], features(tiny))


def test_decode_gives_images_in_unit_range(detokenizer, tiny):
    images = detokenizer.decode(features(tiny), steps=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, tiny.sd_image_size, tiny.sd_image_size)
    assert 0 <= images.min() and images.max() <= 1
    again = detokenizer.decode(features(tiny), steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)
    guided = detokenizer.decode(features(tiny), steps=2, generator=torch.Generator().manual_seed(0), guidance_scale=3.0)
    assert guided.shape == images.shape and not torch.equal(guided, images)
    with pytest.raises(ValueError, match=r"features must be \[K, 16, 64\]"):
        detokenizer.decode(torch.randn(1, 8, 64), steps=1)


def test_paper_detokenizer_on_meta_is_sdxl(paper):
    detokenizer = build_detokenizer(paper, device="meta")
    assert sum(p.numel() for p in detokenizer.unet.parameters()) == 2_567_463_684
    assert sum(p.numel() for p in detokenizer.vae.parameters()) == 83_653_863
    hidden, pooled, spatial = detokenizer.conditions(torch.empty(1, 256, 4096, device="meta"))
    assert hidden.shape == (1, 64, 2048) and pooled.shape == (1, 1280) and spatial is None
    assert detokenizer.unet.config.in_channels == 4
    assert detokenizer.unet.config.projection_class_embeddings_input_dim == 2816


def test_the_latent_scaling_factor_brings_latents_to_unit_variance(detokenizer, tiny):
    vae, channels = copy.deepcopy(detokenizer.vae), tiny.vae.latent_channels
    with torch.no_grad():  # a narrow posterior, as a trained VAE's is (log-variance -10)
        vae.quant_conv.weight[channels:] = 0
        vae.quant_conv.bias[channels:] = -10
    pixels = torch.rand(12, 3, tiny.sd_image_size, tiny.sd_image_size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    factor = latent_scaling_factor(vae, pixels, batch_size=5)
    with torch.no_grad():
        assert (vae.encode(pixels).latent_dist.mode() * factor).std().item() == pytest.approx(1.0, rel=0.02)
        vae.quant_conv.weight[:channels] *= 4
        vae.quant_conv.bias[:channels] *= 4
    assert latent_scaling_factor(vae, pixels) == pytest.approx(factor / 4, rel=0.02)


def test_the_vae_scaling_factor_comes_with_its_weights_unless_the_config_sets_it(detokenizer, tiny, tmp_path):
    vae = copy.deepcopy(detokenizer.vae)
    vae.register_to_config(scaling_factor=0.37)
    export_vae(vae, str(tmp_path / "vae"))
    stored = tiny.model_copy(update={"vae": tiny.vae.model_copy(update={"weights": str(tmp_path / "vae")})})
    assert tiny.vae.scaling_factor is None
    assert build_detokenizer(stored).vae.config.scaling_factor == 0.37
    agreeing = stored.model_copy(update={"vae": stored.vae.model_copy(update={"scaling_factor": 0.37})})
    assert build_detokenizer(agreeing).vae.config.scaling_factor == 0.37
    disagreeing = stored.model_copy(update={"vae": stored.vae.model_copy(update={"scaling_factor": 0.13025})})
    with pytest.raises(WeightsError, match=r"scaling_factor=0.37 \(preset: 0.13025\)"):
        build_detokenizer(disagreeing)


@pytest.mark.parametrize(("prediction_type", "gamma", "floor"),
                         [("epsilon", 5.0, None), ("v_prediction", 5.0, None), ("v_prediction", 5.0, 1.0),
                          ("v_prediction", None, 1.0)])
def test_snr_weighting_weighs_each_sample_by_its_timesteps_snr(detokenizer, tiny, prediction_type, gamma, floor):
    config = tiny.model_copy(update={"loss": tiny.loss.model_copy(update={"snr_gamma": gamma, "snr_floor": floor}),
                                     "scheduler": tiny.scheduler.model_copy(update={"prediction_type": prediction_type})})
    weighted = copy.copy(detokenizer)
    weighted.config, weighted.scheduler = config, noise_scheduler(config)
    plain = copy.copy(weighted)
    plain.config = tiny.model_copy(update={"scheduler": config.scheduler})
    latents = torch.randn(16, tiny.vae.latent_channels, tiny.unet.sample_size, tiny.unet.sample_size,
                          generator=torch.Generator().manual_seed(2))
    conditions = features(tiny, batch=16)

    with torch.no_grad():
        loss = weighted.denoising_loss(latents, conditions, generator=torch.Generator().manual_seed(3))
        unweighted = plain.denoising_loss(latents, conditions, generator=torch.Generator().manual_seed(3))
        # The same draws by hand: noise, then timesteps.
        draws = torch.Generator().manual_seed(3)
        noise = torch.randn(latents.shape, generator=draws)
        timesteps = torch.randint(0, 1000, (16,), generator=draws)
        prediction = weighted._predict(weighted.scheduler.add_noise(latents, noise, timesteps), timesteps,
                                       weighted.conditions(conditions), weighted.time_ids(16))
    alpha_bar = weighted.scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    kept = snr.clamp(min=floor, max=gamma)
    if prediction_type == "epsilon":
        target, weights = noise, kept / snr
    else:
        signal, sigma = alpha_bar.sqrt().view(-1, 1, 1, 1), (1 - alpha_bar).sqrt().view(-1, 1, 1, 1)
        target, weights = signal * noise - sigma * latents, kept / (snr + 1)
    per_sample = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    assert (weights < 1).any()
    assert gamma is None or ((snr < gamma).any() and (snr > gamma).any())  # the draws reach each clamp set
    assert floor is None or ((snr < floor).any() and (snr > floor).any())
    assert loss.item() == pytest.approx((weights * per_sample).mean().item(), rel=1e-5)
    assert unweighted.item() == pytest.approx(per_sample.mean().item(), rel=1e-5)


def test_zero_terminal_snr_trains_and_paints_from_pure_noise(tiny):
    assert noise_scheduler(tiny).alphas_cumprod[-1] > 0.004  # SD-XL's schedule: ~7% of the signal left at t=999
    schedule = tiny.scheduler.model_copy(update={"prediction_type": "v_prediction", "rescale_betas_zero_snr": True})
    config = tiny.model_copy(update={"scheduler": schedule, "loss": tiny.loss.model_copy(update={"snr_gamma": 5.0})})
    assert noise_scheduler(config).alphas_cumprod[-1] == 0
    torch.manual_seed(0)
    detokenizer = build_detokenizer(config)
    latents = torch.randn(4, tiny.vae.latent_channels, tiny.unet.sample_size, tiny.unet.sample_size)
    timesteps = torch.tensor([999] * 4)
    with torch.no_grad():  # at t=999 the noisy latent is the noise alone and the velocity target is -latents
        assert torch.equal(detokenizer.scheduler.add_noise(latents, latents.flip(0), timesteps), latents.flip(0))
        assert torch.allclose(detokenizer.scheduler.get_velocity(latents, latents.flip(0), timesteps), -latents)
        loss = detokenizer.denoising_loss(latents, features(tiny, batch=4), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(loss)
    images = detokenizer.decode(features(tiny), steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1


def test_zero_terminal_snr_needs_velocity_prediction(tiny):
    with pytest.raises(ValueError, match="rescale_betas_zero_snr needs prediction_type v_prediction"):
        tiny.scheduler.model_validate({**tiny.scheduler.model_dump(), "rescale_betas_zero_snr": True})


def test_snr_floor_needs_velocity_prediction_and_at_most_gamma(tiny):
    with pytest.raises(ValueError, match="snr_floor needs scheduler.prediction_type v_prediction"):
        tiny.model_validate({**tiny.model_dump(), "loss": {"snr_floor": 1.0}})
    with pytest.raises(ValueError, match=r"snr_floor \(6.0\) must not exceed loss.snr_gamma \(5.0\)"):
        tiny.loss.model_validate({"snr_gamma": 5.0, "snr_floor": 6.0})


def test_conditions_pooled_from_features_keep_where_each_token_was(tiny):
    config = tiny.model_copy(update={"condition_adapter": tiny.condition_adapter.model_copy(update={"pooled_from": "features"})})
    torch.manual_seed(0)
    adapter = ConditionAdapter(config)
    frames = features(config, batch=2)
    hidden, pooled, _ = adapter(frames)
    assert hidden.shape == (2, tiny.condition_adapter.num_tokens, tiny.unet.cross_attention_dim)
    norm, linear = adapter.pool[1], adapter.pool[2]
    assert linear.in_features == tiny.vit.num_queries * tiny.vit.output_dim
    assert torch.allclose(pooled, linear(norm(frames.flatten(1))))
    moved = frames.clone()  # the same tokens, two of them swapped: a thing on the left is now on the right
    moved[:, [0, 3]] = frames[:, [3, 0]]
    assert not torch.allclose(adapter(moved)[1], pooled)


def test_a_spatial_map_of_the_features_goes_to_the_unet_beside_the_latents(tiny):
    config = tiny.model_copy(update={"condition_adapter": tiny.condition_adapter.model_copy(update={"spatial_channels": 2})})
    torch.manual_seed(0)
    detokenizer = build_detokenizer(config).eval()
    side, latent_channels = tiny.unet.sample_size, tiny.vae.latent_channels
    assert detokenizer.unet.config.in_channels == latent_channels + 2
    frames = features(config, batch=3)
    conditions = detokenizer.conditions(frames)
    linear = detokenizer.adapter.spatial[1]
    assert linear.in_features == tiny.vit.num_queries * tiny.vit.output_dim
    assert torch.equal(conditions.spatial, linear(frames.flatten(1)).view(3, 2, side, side))
    guided = detokenizer.conditions(torch.zeros_like(frames)).cat(conditions)
    assert guided.spatial.shape == (6, 2, side, side) and torch.equal(guided.spatial[3:], conditions.spatial)

    latents = torch.randn(3, latent_channels, side, side, generator=torch.Generator().manual_seed(1))
    timesteps, time_ids = torch.tensor([10, 500, 990]), detokenizer.time_ids(3)
    with torch.no_grad():
        prediction = detokenizer._predict(latents, timesteps, conditions, time_ids)
        moved = conditions._replace(spatial=conditions.spatial.roll(1, dims=-1))  # the same map, one column over
        assert prediction.shape == latents.shape
        assert not torch.allclose(detokenizer._predict(latents, timesteps, moved, time_ids), prediction)
        loss = detokenizer.denoising_loss(latents, frames, generator=torch.Generator().manual_seed(2))
        images = detokenizer.decode(frames, steps=2, generator=torch.Generator().manual_seed(0), guidance_scale=3.0)
    assert torch.isfinite(loss) and images.shape == (3, 3, tiny.sd_image_size, tiny.sd_image_size)


def test_condition_dropout_trains_the_empty_condition_and_never_touches_validation(tiny):
    config = tiny.model_copy(update={"loss": tiny.loss.model_copy(update={"condition_dropout": 0.5})})
    torch.manual_seed(0)
    detokenizer = build_detokenizer(config)
    latents = torch.randn(8, tiny.vae.latent_channels, tiny.unet.sample_size, tiny.unet.sample_size)
    frames = features(tiny, batch=8)
    conditions = []
    detokenizer.adapter.register_forward_hook(lambda module, args, out: conditions.append(args[0].clone()))

    def loss(training):
        detokenizer.train(training)
        with torch.no_grad():
            return detokenizer.denoising_loss(latents, frames, generator=torch.Generator().manual_seed(3))

    trained, validated = loss(True), loss(False)
    dropped = (conditions[0] == 0).flatten(1).all(dim=1)
    assert 0 < dropped.sum() < 8 and torch.equal(conditions[0][~dropped], frames[~dropped])
    assert torch.equal(conditions[1], frames) and trained.item() != validated.item()
