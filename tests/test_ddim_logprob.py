"""DDIM step with log-prob (docs/methods.md §2, §4), by hand and against diffusers; sampled trajectories and the
recomputation of their log-probs on the tiny backbones.

Hand derivation (``hand_step`` below, float64, element by element, never calling the code under test): the SD
noise schedule ``beta_i = (sqrt(0.00085) + (sqrt(0.012) - sqrt(0.00085)) i / 999)^2``, ``a_t = prod_{i<=t}
(1 - beta_i)``; 10 inference steps with ``steps_offset = 1`` give timesteps 901, 801, ..., 1 and
``prev_t = t - 1000 // 10``; ``set_alpha_to_one=False`` makes the last step's ``a_prev = a_0 = 1 - 0.00085``.
Then ``sigma = eta sqrt((1 - a_prev)/(1 - a_t)) sqrt(1 - a_t/a_prev)``, ``mu = sqrt(a_prev) x0_hat +
sqrt(1 - a_prev - sigma^2) eps`` and ``log_prob = mean_i [-(x_prev_i - mu_i)^2 / (2 sigma^2) - log sigma -
log sqrt(2 pi)]`` over the 4 elements of a 1 x 1 x 2 x 2 latent. For t = 501: a_t = 0.27499907, a_prev =
a_401 = 0.42288152, sigma(eta=1) = sqrt(0.79602 * 0.34970) = 0.52761. The gradient of the mean log-prob
w.r.t. the model output is
``(x_prev - mu) / sigma^2 * dmu/dout / 4`` with ``dmu/deps = sqrt(1 - a_prev - sigma^2) - sqrt(a_prev)
sqrt(1 - a_t) / sqrt(a_t)`` (epsilon) and ``dmu/dv = sqrt(1 - a_prev - sigma^2) sqrt(a_t) - sqrt(a_prev)
sqrt(1 - a_t)`` (v-prediction).

Tolerances: the code works in float32 like diffusers; 1e-5 relative against the float64 hand values except
for the last step (t = 1), where ``1 - a_t / a_prev = 8.5e-4`` loses ~1e-4 of relative precision to
cancellation in float32 (diffusers' own variance has the same error), hence 1e-3 absolute on that row.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from lit_pref.backbone import DiffusionBackbone, Trajectory, ddim_step_with_logprob
from lit_pref.backbone.sampler import trajectory_conditioning, transition_log_prob

PROMPTS = ["a red circle on a white background", "a blue square"]
N_TRAIN = 1000


def make_scheduler(num_inference_steps: int = 10, **overrides) -> DDIMScheduler:
    config = dict(num_train_timesteps=N_TRAIN, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    scheduler = DDIMScheduler(**{**config, **overrides})
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def hand_alphas_cumprod() -> list[float]:
    b0, b1 = math.sqrt(0.00085), math.sqrt(0.012)
    out, a = [], 1.0
    for i in range(N_TRAIN):
        a *= 1.0 - (b0 + (b1 - b0) * i / (N_TRAIN - 1)) ** 2
        out.append(a)
    return out


ALPHAS = hand_alphas_cumprod()


def hand_step(t, x, out, prev, eta, prediction_type, num_inference_steps=10):
    """mu (list), sigma, the MEAN log-density and d logp / d out (list), all float64 from the formula."""
    prev_t = t - N_TRAIN // num_inference_steps
    a_t = ALPHAS[t]
    a_p = ALPHAS[prev_t] if prev_t >= 0 else ALPHAS[0]  # final_alpha_cumprod = alphas_cumprod[0]
    sigma = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
    direction = math.sqrt(1 - a_p - sigma**2)
    mus, terms, grads = [], [], []
    for xi, oi, pi in zip(x, out, prev):
        if prediction_type == "epsilon":
            eps = oi
            x0 = (xi - math.sqrt(1 - a_t) * oi) / math.sqrt(a_t)
            dmu = direction - math.sqrt(a_p) * math.sqrt(1 - a_t) / math.sqrt(a_t)
        else:  # v_prediction
            x0 = math.sqrt(a_t) * xi - math.sqrt(1 - a_t) * oi
            eps = math.sqrt(a_t) * oi + math.sqrt(1 - a_t) * xi
            dmu = direction * math.sqrt(a_t) - math.sqrt(a_p) * math.sqrt(1 - a_t)
        mu = math.sqrt(a_p) * x0 + direction * eps
        mus.append(mu)
        terms.append(-((pi - mu) ** 2) / (2 * sigma**2) - math.log(sigma) - math.log(math.sqrt(2 * math.pi)))
        grads.append((pi - mu) / sigma**2 * dmu / len(x))
    return mus, sigma, sum(terms) / len(terms), grads


X = [0.5, -1.0, 0.25, 2.0]
OUT = [0.1, -0.3, 0.7, 0.0]
PREV = [0.4, -0.9, 0.3, 1.8]


def as_latent(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype).view(1, 1, 2, 2)


def test_hand_schedule_matches_the_scheduler_table():
    table = make_scheduler().alphas_cumprod.double()
    assert table[501].item() == pytest.approx(ALPHAS[501], rel=1e-5)
    assert make_scheduler().timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_log_prob_of_given_sample_by_hand(prediction_type, eta):
    scheduler = make_scheduler(prediction_type=prediction_type)
    out = as_latent(OUT).requires_grad_(True)
    given = as_latent(PREV)
    prev, log_prob = ddim_step_with_logprob(scheduler, out, 501, as_latent(X), eta=eta, prev_sample=given)
    _, sigma, expected, grads = hand_step(501, X, OUT, PREV, eta, prediction_type)
    assert prev is given
    assert log_prob.shape == (1,) and log_prob.dtype == torch.float32
    assert log_prob.item() == pytest.approx(expected, rel=1e-5)
    assert log_prob.item() != pytest.approx(4 * expected, rel=1e-2)  # a mean over elements, not a sum
    log_prob.sum().backward()
    expected_grad = torch.tensor(grads, dtype=torch.float64)
    torch.testing.assert_close(out.grad.double().flatten(), expected_grad, rtol=1e-4, atol=1e-7)
    if eta == 1.0:
        assert sigma == pytest.approx(0.52761, abs=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_drawn_sample_is_mu_plus_sigma_z_by_hand(prediction_type):
    scheduler = make_scheduler(prediction_type=prediction_type)
    prev, log_prob = ddim_step_with_logprob(scheduler, as_latent(OUT), 501, as_latent(X), eta=1.0,
                                            generator=torch.Generator().manual_seed(3))
    z = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(3)).double().flatten().tolist()
    mus, sigma, _, _ = hand_step(501, X, OUT, PREV, 1.0, prediction_type)
    expected_prev = [m + sigma * zi for m, zi in zip(mus, z)]
    torch.testing.assert_close(prev.double().flatten(), torch.tensor(expected_prev, dtype=torch.float64),
                               rtol=0, atol=1e-5)
    _, _, expected_lp, _ = hand_step(501, X, OUT, expected_prev, 1.0, prediction_type)
    assert log_prob.item() == pytest.approx(expected_lp, rel=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_per_sample_timesteps_by_hand(prediction_type):
    """Row 0 at t = 501 (a_prev = a_401), row 1 at the last step t = 1 (a_prev = final_alpha_cumprod)."""
    scheduler = make_scheduler(prediction_type=prediction_type)
    x1, out1, prev1 = [0.3, 0.1, -0.2, 0.9], [0.2, 0.4, -0.1, 0.5], [0.28, 0.08, -0.19, 0.88]
    x = torch.cat([as_latent(X), as_latent(x1)])
    out = torch.cat([as_latent(OUT), as_latent(out1)])
    given = torch.cat([as_latent(PREV), as_latent(prev1)])
    _, log_prob = ddim_step_with_logprob(scheduler, out, torch.tensor([501, 1]), x, eta=1.0, prev_sample=given)
    expected0 = hand_step(501, X, OUT, PREV, 1.0, prediction_type)[2]
    expected1 = hand_step(1, x1, out1, prev1, 1.0, prediction_type)[2]
    assert log_prob.shape == (2,)
    assert log_prob[0].item() == pytest.approx(expected0, rel=1e-5)
    assert log_prob[1].item() == pytest.approx(expected1, abs=1e-3)
    assert abs(expected0 - expected1) > 1.0  # the two rows really used different alphas
    for i, t in enumerate((501, 1)):  # the same as one call per sample with a scalar timestep
        _, single = ddim_step_with_logprob(scheduler, out[i : i + 1], torch.tensor(t), x[i : i + 1], eta=1.0,
                                           prev_sample=given[i : i + 1])
        assert single.item() == pytest.approx(log_prob[i].item(), abs=1e-6)


CONFIGS = {
    "epsilon": {},
    "v_prediction": {"prediction_type": "v_prediction"},
    "sample": {"prediction_type": "sample"},
    "clip_sample": {"clip_sample": True},
    "thresholding": {"thresholding": True},
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_matches_diffusers_step_with_the_same_noise(config, eta):
    scheduler = make_scheduler(**CONFIGS[config])
    ref = make_scheduler(**CONFIGS[config])
    gen = torch.Generator().manual_seed(0)
    shape = (2, 4, 8, 8)
    x, out = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    for i, t in enumerate(scheduler.timesteps):
        z = torch.randn(shape, generator=torch.Generator().manual_seed(i))
        theirs = ref.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        gen_i = torch.Generator().manual_seed(i)
        ours, log_prob = ddim_step_with_logprob(scheduler, out, t, x, eta=eta, generator=gen_i)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        # prev - mu = sigma z, so the density of the drawn sample is mean(-z^2/2) - log sigma - log sqrt(2 pi).
        t_int, prev_t = int(t), int(t) - N_TRAIN // 10
        a_t, a_p = ALPHAS[t_int], ALPHAS[prev_t] if prev_t >= 0 else ALPHAS[0]
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        expected = (-(z.double() ** 2) / 2).mean(dim=(1, 2, 3)) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(log_prob.double(), expected, rtol=0, atol=1e-3 if t_int == 1 else 2e-5)
        # Scoring diffusers' sample gives the density of that sample.
        _, scored = ddim_step_with_logprob(scheduler, out, t, x, eta=eta, prev_sample=theirs)
        torch.testing.assert_close(scored, log_prob, rtol=0, atol=1e-4)


def test_list_of_generators_draws_like_diffusers():
    scheduler = make_scheduler()
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    gens = lambda: [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]  # noqa: E731
    theirs = make_scheduler().step(out, 501, x, eta=1.0, generator=gens()).prev_sample
    ours, _ = ddim_step_with_logprob(scheduler, out, 501, x, eta=1.0, generator=gens())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_low_precision_inputs_get_a_float32_density_of_the_stored_sample():
    scheduler = make_scheduler()
    x, out = torch.randn(2, 4, 8, 8).bfloat16(), torch.randn(2, 4, 8, 8).bfloat16()
    prev, log_prob = ddim_step_with_logprob(scheduler, out, 501, x, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert prev.dtype == torch.bfloat16 and log_prob.dtype == torch.float32
    _, again = ddim_step_with_logprob(scheduler, out, 501, x, eta=1.0, prev_sample=prev)
    assert torch.equal(again, log_prob)  # the density is of the bf16 tensor that is stored
    _, fp32 = ddim_step_with_logprob(scheduler, out.float(), 501, x.float(), eta=1.0, prev_sample=prev.float())
    assert torch.equal(fp32, log_prob)


def test_invalid_arguments_raise():
    scheduler = make_scheduler()
    x = torch.randn(2, 4, 8, 8)
    for eta in (0.0, -1.0):
        with pytest.raises(ValueError, match="eta"):
            ddim_step_with_logprob(scheduler, x, 501, x, eta=eta)
    with pytest.raises(ValueError, match="not both"):
        ddim_step_with_logprob(scheduler, x, 501, x, eta=1.0, prev_sample=x, generator=torch.Generator())
    with pytest.raises(ValueError, match="timestep"):
        ddim_step_with_logprob(scheduler, x, torch.tensor([501, 401, 301]), x, eta=1.0)
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim_step_with_logprob(DDIMScheduler(), x, 501, x, eta=1.0)
    # set_alpha_to_one=True: the last step goes to a_prev = 1, where sigma = 0 and the density is undefined.
    with pytest.raises(ValueError, match="zero variance"):
        ddim_step_with_logprob(make_scheduler(set_alpha_to_one=True), x, torch.tensor([501, 1]), x, eta=1.0)


# ------------------------------------------------------------------ backbone trajectories
SAMPLE_KW = dict(num_inference_steps=4, guidance_scale=3.0, eta=1.0)


def perturb_lora(backbone: DiffusionBackbone) -> None:
    with torch.no_grad():
        for name, param in backbone.unet.named_parameters():
            if "lora_B" in name:
                param.normal_()


def recompute(backbone, traj, k, **kw):
    return backbone.step_log_prob(traj.latents[:, k], traj.timesteps[k], traj.latents[:, k + 1], traj.prompts,
                                  traj.guidance_scale, traj.eta, traj.num_steps, **kw)


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_sample_trajectory_shapes_reproducibility_and_decoding(sdxl):
    backbone = DiffusionBackbone.tiny(sdxl=sdxl)
    traj = backbone.sample(PROMPTS, generator=torch.Generator().manual_seed(7), return_trajectory=True, **SAMPLE_KW)
    assert isinstance(traj, Trajectory) and traj.prompts == PROMPTS and traj.num_steps == 4
    assert traj.images.shape == (2, 3, 32, 32)
    assert traj.latents.shape == (2, 5, 4, 16, 16)
    assert traj.log_probs.shape == (2, 4) and traj.log_probs.dtype == torch.float32
    assert traj.timesteps.tolist() == [751, 501, 251, 1]
    assert torch.isfinite(traj.log_probs).all()
    x_T = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    assert torch.equal(traj.latents[:, 0], x_T)  # x_T first
    torch.testing.assert_close(backbone.decode_latents(traj.latents[:, -1]), traj.images, rtol=0, atol=0)
    again = backbone.sample(PROMPTS, generator=torch.Generator().manual_seed(7), return_trajectory=True, **SAMPLE_KW)
    assert torch.equal(again.latents, traj.latents) and torch.equal(again.log_probs, traj.log_probs)
    other = backbone.sample(PROMPTS, generator=torch.Generator().manual_seed(8), return_trajectory=True, **SAMPLE_KW)
    assert not torch.allclose(other.latents[:, -1], traj.latents[:, -1])
    # The same draws as the plain (diffusers) sampler with the same eta.
    plain = backbone.sample(PROMPTS, generator=torch.Generator().manual_seed(7), **SAMPLE_KW)
    torch.testing.assert_close(plain, traj.images, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_recomputed_log_probs_match_then_follow_the_policy_not_the_reference(sdxl):
    backbone = DiffusionBackbone.tiny(sdxl=sdxl)
    traj = backbone.sample(PROMPTS, generator=torch.Generator().manual_seed(3), return_trajectory=True, **SAMPLE_KW)
    with torch.no_grad():
        same = torch.stack([recompute(backbone, traj, k) for k in range(4)], dim=1)
    torch.testing.assert_close(same, traj.log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.exp(same - traj.log_probs), torch.ones(2, 4), rtol=0, atol=1e-5)
    # Per-sample step indices: row b at step ks[b].
    ks, rows = torch.tensor([1, 3]), torch.arange(2)
    with torch.no_grad():
        mixed = backbone.step_log_prob(traj.latents[rows, ks], traj.timesteps[ks], traj.latents[rows, ks + 1],
                                       PROMPTS, 3.0, 1.0, 4)
    torch.testing.assert_close(mixed, traj.log_probs[rows, ks], rtol=0, atol=1e-5)

    perturb_lora(backbone)
    policy = torch.stack([recompute(backbone, traj, k) for k in range(4)], dim=1)
    assert (policy - traj.log_probs).abs().min() > 1e-3
    policy[:, 0].sum().backward()  # gradients reach the adapters
    grads = [p.grad for n, p in backbone.unet.named_parameters() if "lora_" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with backbone.reference_forward():
        reference = torch.stack([recompute(backbone, traj, k) for k in range(4)], dim=1)
    torch.testing.assert_close(reference, traj.log_probs, rtol=0, atol=1e-5)


def test_recompute_without_guidance_and_with_precomputed_conditioning():
    backbone = DiffusionBackbone.tiny()
    kw = dict(num_inference_steps=3, eta=0.7)
    plain = backbone.sample(PROMPTS, guidance_scale=1.0, generator=torch.Generator().manual_seed(1),
                            return_trajectory=True, **kw)
    guided = backbone.sample(PROMPTS, guidance_scale=5.0, negative_prompt="blurry",
                             generator=torch.Generator().manual_seed(1), return_trajectory=True, **kw)
    cond = backbone.encode_prompts(PROMPTS)
    negative = backbone.encode_prompts(["blurry"] * 2)
    with torch.no_grad():
        for k in range(3):
            lp = backbone.step_log_prob(plain.latents[:, k], plain.timesteps[k], plain.latents[:, k + 1], cond,
                                        1.0, 0.7, 3)
            torch.testing.assert_close(lp, plain.log_probs[:, k], rtol=0, atol=1e-5)
            lp = backbone.step_log_prob(guided.latents[:, k], guided.timesteps[k], guided.latents[:, k + 1], cond,
                                        5.0, 0.7, 3, negative_cond=negative)
            torch.testing.assert_close(lp, guided.log_probs[:, k], rtol=0, atol=1e-5)
            by_prompt = backbone.step_log_prob(guided.latents[:, k], guided.timesteps[k], guided.latents[:, k + 1],
                                               PROMPTS, 5.0, 0.7, 3, negative_prompt="blurry")
            torch.testing.assert_close(by_prompt, lp, rtol=0, atol=0)
        wrong_negative = backbone.step_log_prob(guided.latents[:, 0], guided.timesteps[0], guided.latents[:, 1], cond,
                                                5.0, 0.7, 3)  # "" instead of "blurry"
    assert (wrong_negative - guided.log_probs[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd", "sdxl"])
def test_transition_log_prob_scores_chosen_rows_of_a_stored_trajectory_with_its_own_settings(sdxl):
    backbone = DiffusionBackbone.tiny(sdxl=sdxl)
    prompts = ["a red circle", "a blue square", "a green star"]
    traj = backbone.sample(prompts, num_inference_steps=3, guidance_scale=4.0, eta=0.8, negative_prompt="blurry",
                           generator=torch.Generator().manual_seed(2), return_trajectory=True)
    cond, negative = trajectory_conditioning(backbone, traj)
    blurry = backbone.encode_prompts(["blurry"], target_size=(32, 32))["encoder_hidden_states"][0]
    assert torch.equal(negative["encoder_hidden_states"][1], blurry)
    rows = torch.tensor([2, 0])
    with torch.no_grad():
        for k in range(3):  # the sampling weights give back the stored log-probs of exactly the chosen chains
            torch.testing.assert_close(transition_log_prob(backbone, traj, k, cond, negative, rows),
                                       traj.log_probs[rows, k], rtol=0, atol=1e-5)
            torch.testing.assert_close(transition_log_prob(backbone, traj, k, cond, negative), traj.log_probs[:, k],
                                       rtol=0, atol=1e-5)
        swapped = transition_log_prob(backbone, traj, 0, negative, cond)  # conditioning and negative exchanged
    assert (swapped - traj.log_probs[:, 0]).abs().max() > 1e-4


def test_trajectory_errors():
    backbone = DiffusionBackbone.tiny()
    with pytest.raises(ValueError, match="eta"):
        backbone.sample(PROMPTS, num_inference_steps=2, eta=0.0, return_trajectory=True)
    traj = backbone.sample(PROMPTS, generator=torch.Generator().manual_seed(0), return_trajectory=True,
                           num_inference_steps=2, eta=1.0)
    with pytest.raises(ValueError, match="step index"):  # passing k instead of timesteps[k]
        backbone.step_log_prob(traj.latents[:, 0], 0, traj.latents[:, 1], PROMPTS, 7.5, 1.0, 2)
