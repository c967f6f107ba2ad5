"""CAVIA: a context vector at the policy's input, adapted alone by the inner loop, with the
network meta-learned through that adaptation (gradient, TRPO curvature, evaluation, runs)."""

import json

import pytest
import torch

import metarl.maml as maml
from conftest import assert_meta_problem_is_double_backprop, synthetic_episodes
from metarl import config as cfg
from metarl.cli import main
from metarl.maml import CONTEXT, MetaBatch, adapt, adapt_steps, cavia_step_size, log_probs, surrogate_loss
from metarl.policy import GaussianMLPPolicy, detach_params, expand_params
from metarl.run.factory import build
from metarl.run.rundir import RunDir
from metarl.trpo import flat

LR = 0.5
STEP = cavia_step_size(LR)


def tiny_policy(context_dim=3):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(5,), nonlinearity="tanh", init_std=0.8,
                               context_dim=context_dim).double()
    return policy


def network(theta):
    return {name: p for name, p in theta.items() if name != CONTEXT}


def test_the_context_is_an_input_per_task_and_only_it_adapts():
    policy = tiny_policy()
    theta = policy.parameters_dict()
    assert torch.equal(theta[CONTEXT], torch.zeros(3, dtype=torch.float64))
    episodes = synthetic_episodes(seed=0)
    params = adapt(policy, expand_params(theta, episodes.num_tasks), episodes, STEP)
    for name, p in theta.items():
        changed = not torch.equal(params[name], p.expand_as(params[name]))
        assert changed == (name == CONTEXT), name
    # Each task's context changes its own actions only.
    obs = torch.randn(episodes.num_tasks, 4, 2, dtype=torch.float64)
    mean, _ = policy.mean_std(obs, params)
    alone, _ = policy.mean_std(obs[:1], {k: v[:1] for k, v in params.items()})
    assert torch.allclose(mean[:1], alone)
    assert not torch.allclose(mean, policy.mean_std(obs, expand_params(theta, episodes.num_tasks))[0])


def cavia_meta_loss(policy, net, train, valid, old):
    """Post-adaptation surrogate as a function of the network only (the context starts at zero)."""
    theta = {**net, CONTEXT: torch.zeros(policy.context_dim, dtype=torch.float64, requires_grad=True)}
    params = adapt_steps(policy, theta, train, STEP)
    return surrogate_loss(log_probs(policy, params, valid), old, valid.advantages, valid.mask).mean()


def test_the_meta_gradient_goes_through_the_context_adaptation_and_matches_finite_differences():
    policy = tiny_policy()
    theta = policy.parameters_dict()
    train, valid = [synthetic_episodes(seed=0)], synthetic_episodes(seed=10)
    old = log_probs(policy, detach_params(adapt_steps(policy, theta, train, STEP)), valid).detach()
    net = network(theta)
    analytic = flat(torch.autograd.grad(cavia_meta_loss(policy, net, train, valid, old), list(net.values())))
    base, eps, numeric = flat(list(net.values())).detach(), 1e-6, []
    for i in range(base.numel()):
        values = []
        for sign in (1.0, -1.0):
            shifted = base.clone()
            shifted[i] += sign * eps
            chunks = torch.split(shifted, [p.numel() for p in net.values()])
            params = {n: c.view_as(p) for (n, p), c in zip(net.items(), chunks, strict=True)}
            with torch.no_grad():
                values.append(float(cavia_meta_loss(policy, params, train, valid, old)))
        numeric.append((values[0] - values[1]) / (2 * eps))
    assert torch.allclose(analytic, torch.tensor(numeric, dtype=torch.float64), atol=1e-7, rtol=1e-5)
    # The second-order part is real: freezing the context's gradient gives another meta-gradient.
    first = maml.adapt_steps(policy, theta, train, STEP, first_order=True)
    frozen = surrogate_loss(log_probs(policy, first, valid), old, valid.advantages, valid.mask).mean()
    assert not torch.allclose(analytic, flat(torch.autograd.grad(frozen, list(net.values()))), atol=1e-6)


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_trpo_curvature_is_jt_f_j_through_the_context_adaptation(inner_steps):
    # The TRPO quantities are over the network only; the reference is double backprop of the KL
    # through the whole context adaptation, as a function of the network.
    policy = tiny_policy()
    theta = policy.parameters_dict()
    batch = MetaBatch([synthetic_episodes(seed=s) for s in range(inner_steps)], synthetic_episodes(seed=10))
    problem = maml._meta_problem(policy, theta, batch, STEP, False)
    net = list(network(theta).values())
    assert len(problem.gradient) == len(net)  # the context is no meta-parameter
    loss, kl = maml._meta_objective(policy, theta, batch, STEP, False, problem.old)
    assert_meta_problem_is_double_backprop(problem, loss, kl, batch.num_tasks, net)


@pytest.mark.parametrize("outer", ["trpo", "promp"])
def test_the_outer_update_moves_the_network_and_never_the_context(outer):
    policy = tiny_policy()
    batch = MetaBatch([synthetic_episodes(seed=0)], synthetic_episodes(seed=10))
    before = {k: v.detach().clone() for k, v in policy.parameters_dict().items()}
    if outer == "trpo":
        stats = maml.trpo_meta_step(policy, batch, STEP, max_kl=0.05)
        assert stats.accepted
    else:
        optimizer = torch.optim.Adam(maml.meta_parameters(policy.parameters_dict(), STEP), lr=1e-2)
        maml.ppo_meta_step(policy, optimizer, batch, STEP, inner_loss="lvc", epochs=2, inner_kl_coef=1e-3)
    after = policy.parameters_dict()
    assert torch.equal(after[CONTEXT], before[CONTEXT])
    assert any(not torch.equal(after[k], before[k]) for k in before if k != CONTEXT)


TINY = ["run.iterations=2", "maml.meta_batch_size=3", "sampler.episodes_per_task=4", "sampler.horizon=20",
        "policy.hidden_sizes=[16]", "trpo.cg_iters=3", "eval.num_tasks=3", "eval.episodes_per_task=3",
        "eval.num_steps=2", "maml.cavia_context=2", "maml.inner_lr=1.0", "eval.step_sizes=[1.0]"]


def test_a_cavia_run_trains_checkpoints_and_evaluates_on_the_context(tmp_path, monkeypatch):
    args = ["train", "experiments/navigation2d_quick.yaml", *TINY, f"run.output_dir={tmp_path}", "run.name=c",
            "--quiet"]
    adapted = []
    original = maml.adapt

    def spy(policy, params, episodes, step_size, *a, **k):
        adapted.append(step_size)
        return original(policy, params, episodes, step_size, *a, **k)

    monkeypatch.setattr("metarl.evaluate.adapt", spy)
    assert main(args) == 0
    assert adapted and all(s == {CONTEXT: 1.0} for s in adapted)  # evaluation adapts the context only
    run = RunDir.open(tmp_path / "c")
    saved = run.load_checkpoint()["policy"]
    assert torch.equal(saved[CONTEXT], torch.zeros(2))
    result = json.loads((run.path / "eval.json").read_text())
    assert result["step_sizes"] == [1.0, 1.0]
    start = build(run.load_config())  # the network moved from its initialisation
    assert any(not torch.equal(p.cpu(), saved[n].cpu()) for n, p in start.policy.state_dict().items() if n != CONTEXT)
    start.close()


@pytest.mark.parametrize("override", ["maml.meta_sgd=true", "maml.emaml=true"])
def test_cavia_refuses_what_it_cannot_combine_with(tmp_path, capsys, override):
    args = ["train", "experiments/navigation2d_quick.yaml", *TINY, override, f"run.output_dir={tmp_path}",
            "run.name=x", "--quiet"]
    assert main(args) == 2
    assert "maml.cavia_context:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(cfg.ConfigError, match="maml.cavia_context"):
        cfg.load(None, ["maml.cavia_context=-1"])
