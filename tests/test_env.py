import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from dynalay_env import (
    TASK_DEFAULTS,
    DynaLayEnv,
    DynaLaySB3VecEnv,
    DynaLayVectorEnv,
    EnvConfig,
    build_engine,
    evaluate_policy,
    make_engine,
    task_defaults,
)


@pytest.fixture(scope="module")
def splits():
    from main_models import load_digits

    return load_digits()


def test_the_bare_id_is_the_default_task_with_its_own_settings():
    # the default task is the one where decisions pay, with the settings it needs; an explicit value wins
    engine = gym.make("DynaLay-v0", pretrain_epochs=0).unwrapped.engine
    assert engine.splits.name == "grid-lookup" == EnvConfig().dataset and engine.model_name == "grid-lstm"
    assert engine.reward.lam == TASK_DEFAULTS["grid-lookup"]["lam"] == 0.05
    assert engine.trainer.alternatives == ("plain",)
    config = EnvConfig()
    assert (config.pretrain_epochs, config.warmup_stop_prob, config.train_alternatives) == (4, 0.3, ("plain",))
    assert EnvConfig(lam=0.2, train_alternatives=()).lam == 0.2 and EnvConfig(train_alternatives=()).train_alternatives == ()
    # a dataset without its own entry gets the general defaults
    digits = EnvConfig(dataset="digits")
    assert (digits.lam, digits.pretrain_epochs, digits.warmup_stop_prob, digits.train_alternatives) == (0.005, 10, 0.0, ())
    assert task_defaults("some/dir/grid-lookup")["lam"] == 0.05
    # the main model's learning rate is a task setting too: grid-reach learns its routes at 3e-3
    assert (digits.main_lr, config.main_lr, EnvConfig(dataset="grid-reach").main_lr) == (1e-3, 1e-3, 3e-3)
    assert EnvConfig(dataset="grid-reach", main_lr=0.01).main_lr == 0.01
    with pytest.raises(ValueError, match="main_lr must be > 0"):
        EnvConfig(main_lr=0)


def test_a_bare_dataset_is_warmed_up_and_passes_gymnasium_and_sb3_checkers():
    env = gym.make("DynaLay-v0", dataset="digits", progress=False)
    assert env.spec.nondeterministic and env.spec.reward_threshold == pytest.approx(0.45)
    # the defaults are train.py's: a warmed-up main model, so any trainer starts from useful paths
    engine = env.unwrapped.engine
    assert engine.reward.lam == task_defaults("digits")["lam"]
    plain = evaluate_policy(engine.model, engine.splits, [])
    assert plain.accuracy > 0.9
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(DynaLayEnv(dataset="digits", pretrain_epochs=0, lam_range=(0.0, 0.5)), warn=True)


def test_make_passes_kwargs_and_make_vec_returns_the_batched_engine():
    env = gym.make("DynaLay-v0", dataset="digits", pretrain_epochs=0, lam=0.25, max_steps=4)
    assert env.unwrapped.engine.reward.lam == 0.25 and env.unwrapped.engine.max_steps == 4
    venv = gym.make_vec("DynaLay-v0", dataset="digits", pretrain_epochs=0, num_envs=5, vectorization_mode="vector_entry_point", lam=0.1)
    assert isinstance(venv, DynaLayVectorEnv)
    assert venv.engine.num_envs == 5 and venv.engine.reward.lam == 0.1
    obs, _ = venv.reset(seed=3)
    assert obs.shape == (5, venv.single_observation_space.shape[0]) and obs.dtype == np.float32


def test_out_of_range_action_names_the_valid_range():
    env = DynaLayEnv(dataset="digits", pretrain_epochs=0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"valid actions are 0 \(NOP\) to 3"):
        env.step(4)
    with pytest.raises(ValueError, match="out of range"):
        env.step(-1)
    venv = DynaLayVectorEnv(3, dataset="digits", pretrain_epochs=0)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="valid actions"):
        venv.step(np.array([0, 9, 1]))
    with pytest.raises(ValueError, match="expected 3"):
        venv.step(np.array([0, 1]))
    engine = build_engine(2, dataset="digits", pretrain_epochs=0)
    engine.reset()
    with pytest.raises(ValueError, match="valid actions"):
        engine.step(torch.tensor([0, 5]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "mnist-from-mars"}, "unknown dataset 'mnist-from-mars'; available: digits"),
        ({"lam": -0.1}, "lam must be >= 0"),
        ({"lam_range": (0.5, 0.1)}, "lam_range"),
        ({"lam_range": (-1.0, 0.1)}, "lam_range"),
        ({"mode": "test"}, "mode must be"),
        ({"fpi_solver": "newton"}, "fpi_solver must be one of"),
        ({"main_grad": "newton"}, "main_grad must be one of"),
        ({"main_grad": "exact"}, "grad 'exact' needs a block with an exact_fixed_point"),  # the mlp has no direct form
    ],
)
def test_bad_construction_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynaLayEnv(**{"dataset": "digits", "pretrain_epochs": 0, **kwargs})


def test_reward_follows_eq2_with_consecutive_penalty():
    alpha, beta, lam = 0.5, 0.3, 0.7
    env = DynaLayEnv(dataset="digits", pretrain_epochs=0, alpha=alpha, beta=beta, lam=lam, max_steps=6, cotrain=False)
    engine = env.engine
    net = engine.model
    full = net.straightforward_flops
    setup, per_iter, reprop = net.layer_setup_flops.tolist(), net.layer_iteration_flops.tolist(), net.reprop_flops().tolist()
    obs, _ = env.reset(seed=4)
    lay = engine.layout
    assert obs[lay.lam] == pytest.approx(lam)
    expected_compute = 1.0
    for k, action in enumerate([2, 2, 1, 2], start=1):
        obs, reward, terminated, truncated, info = env.step(action)
        repeat = {1: 1, 2: 2, 3: 1, 4: 1}[k]
        # the solver's own work (Anderson on the mlp) is charged on top of its function evaluations
        solver = float(net.layers[action - 1].solver_overhead_flops(torch.tensor([info["fpi_iterations"]]), 64)[0])
        cost = (setup[action - 1] + info["fpi_iterations"] * per_iter[action - 1] + solver + reprop[action - 1]) / full
        assert info["step_cost"] == pytest.approx(cost, rel=1e-5)
        assert reward == pytest.approx(-beta * lam * cost * repeat, rel=1e-5)
        assert not terminated and not truncated
        assert obs[lay.last_action].tolist() == [float(action == i) for i in (1, 2, 3)]
        assert obs[lay.step_fraction] == pytest.approx(k / 6)
        assert obs[lay.repeat_fraction] == pytest.approx(repeat / 6)
        expected_compute += cost
    correct = int(engine.prediction[0]) == int(engine.label[0])
    obs, reward, terminated, truncated, info = env.step(0)
    assert terminated and not truncated
    assert reward == pytest.approx(alpha * correct)
    assert info["correct"] is correct
    assert info["compute"] == pytest.approx(expected_compute, rel=1e-5)
    assert info["path"].tolist() == [2, 2, 1, 2, 0, 0]  # padded to the budget T
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_budget_ends_the_episode_with_the_answer():
    env = DynaLayEnv(dataset="digits", pretrain_epochs=0, max_steps=2, lam=0.0, cotrain=False)
    env.reset(seed=0)
    _, r1, t1, _, _ = env.step(3)
    assert not t1 and r1 == 0.0  # lam = 0: compute is free
    _, r2, t2, tr2, info = env.step(3)
    assert t2 and not tr2
    assert r2 == pytest.approx(0.5 * info["correct"])
    assert info["steps"] == 2 and info["path"].tolist() == [3, 3]  # T = 2: no padding


def test_single_and_vector_faces_share_semantics():
    actions = [1, 0, 3, 2, 0, 0, 2, 2]
    single = DynaLayEnv(dataset="digits", pretrain_epochs=0, lam=0.3, cotrain=False, seed=7)
    vector = DynaLayVectorEnv(1, dataset="digits", pretrain_epochs=0, lam=0.3, cotrain=False, seed=7)
    obs_s, _ = single.reset(seed=11)
    obs_v, _ = vector.reset(seed=11)
    np.testing.assert_allclose(obs_s, obs_v[0])
    for a in actions:
        obs_s, r_s, term_s, _, info_s = single.step(a)
        obs_v, r_v, term_v, _, info_v = vector.step(np.array([a]))
        assert r_s == pytest.approx(float(r_v[0]), abs=1e-6)
        assert term_s == bool(term_v[0])
        if term_s:
            np.testing.assert_allclose(obs_s, info_v["final_obs"][0])
            assert info_v["final_info"]["correct"][0] == info_s["correct"]
            obs_s, _ = single.reset()
            # the vector face already reset this row in the same step; the single face draws next
            np.testing.assert_allclose(obs_s, obs_v[0])
        else:
            np.testing.assert_allclose(obs_s, obs_v[0])


def test_vector_env_autoresets_in_the_same_step():
    venv = DynaLayVectorEnv(4, dataset="digits", pretrain_epochs=0, cotrain=False)
    venv.reset(seed=0)
    obs, rew, term, trunc, info = venv.step(np.array([0, 1, 0, 2]))
    assert term.tolist() == [True, False, True, False]
    assert info["_final_obs"].tolist() == term.tolist()
    assert info["final_obs"][1] is None and info["final_obs"][0].shape == obs[0].shape
    assert set(info["final_info"]) >= {"correct", "compute", "iterations", "path", "_correct"}
    # reset rows start a fresh episode: step counter and last action are zero again
    lay = venv.engine.layout
    assert obs[0, lay.step_fraction] == 0 and obs[1, lay.step_fraction] > 0


def test_sb3_vecenv_reports_terminal_observation_and_episode_keys():
    env = DynaLaySB3VecEnv(3, dataset="digits", pretrain_epochs=0, cotrain=False)
    env.seed(5)
    obs = env.reset()
    assert obs.shape == (3, env.observation_space.shape[0])
    env.step_async(np.array([0, 1, 1]))
    obs, rewards, dones, infos = env.step_wait()
    assert dones.tolist() == [True, False, False]
    assert set(infos[0]) >= {"terminal_observation", "correct", "compute", "path", "lam"}
    assert infos[1] == {}
    assert env.get_attr("render_mode") == [None, None, None]
    with pytest.raises(AttributeError):  # a pure adapter: the engine's internals are not reachable by name
        env.get_attr("num_layers")


def test_returned_observations_are_copies():
    venv = DynaLayVectorEnv(2, dataset="digits", pretrain_epochs=0, cotrain=False)
    obs, _ = venv.reset(seed=0)
    obs[:] = 123.0
    assert not np.allclose(venv.engine.obs.numpy(), 123.0)


def test_cotraining_updates_only_the_main_model_every_k_episodes():
    engine = build_engine(8, dataset="digits", pretrain_epochs=0, cotrain_every=16, seed=0)
    before = [p.detach().clone() for p in engine.model.parameters()]
    engine.reset()
    finished = 0
    gen = torch.Generator().manual_seed(0)
    while finished < 40:
        finished += int(engine.step(torch.randint(0, 4, (8,), generator=gen)).terminated.sum())
        assert engine.trainer.updates == finished // 16
    assert np.isfinite(engine.trainer.last_loss)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, engine.model.parameters()))
    # observations never carry a graph back to the main model
    assert not engine.obs.requires_grad


def test_lambda_is_drawn_per_episode_from_the_range():
    engine = build_engine(64, dataset="digits", pretrain_epochs=0, lam_range=(0.1, 0.4), cotrain=False)
    obs = engine.reset()
    lam = obs[:, engine.layout.lam]
    assert (lam >= 0.1).all() and (lam <= 0.4).all() and lam.std() > 0.03


def test_eval_mode_shows_each_test_sample_once_with_a_frozen_model(splits):
    engine = make_engine(EnvConfig(splits.name, pretrain_epochs=0), 100, mode="eval", autoreset=False, data=splits)
    assert engine.trainer is None and not engine.model.training
    seen = []
    for _ in range(4):
        engine.stop()
        n = min(100, engine.num_samples - len(seen))
        engine.reset(torch.arange(n))
        seen += engine.sample[:n].tolist()
    assert sorted(seen) == list(range(engine.num_samples))


def test_idle_rows_get_no_compute():
    engine = build_engine(4, dataset="digits", pretrain_epochs=0, autoreset=False, cotrain=False)
    engine.reset()
    engine.step(torch.tensor([0, 0, 1, 1]))
    assert engine.running.tolist() == [False, False, True, True]
    out = engine.step(torch.tensor([2, 3, 1, 1]))
    assert out.step_iterations[:2].tolist() == [0, 0]
    assert out.reward[:2].tolist() == [0.0, 0.0]
    assert (out.step_iterations[2:] > 0).all()


def test_evaluate_policy_reports_compute_relative_to_fpi_everywhere(splits):
    engine = make_engine(EnvConfig(splits.name, pretrain_epochs=0, cotrain=False), data=splits)
    nop = evaluate_policy(engine.model, engine.splits, lambda obs: torch.zeros(obs.shape[0], dtype=torch.long))
    assert nop.compute == pytest.approx(1.0)
    assert nop.action_frequency == [1.0, 0.0, 0.0, 0.0]
    assert nop.num_samples == 359 and nop.mean_episode_length == 0
    full = evaluate_policy(engine.model, engine.splits, [1, 2, 3])
    assert full.compute_fraction == pytest.approx(1.0)
    assert full.accuracy == pytest.approx(full.fpi_all_accuracy)
    assert nop.compute_fraction == pytest.approx(1.0 / full.fpi_all_compute)
    # the plain path of the evaluation equals the model's plain forward pass
    with torch.no_grad():
        plain = (engine.model(splits.x_test).argmax(1) == splits.y_test).float().mean()
    assert nop.accuracy == pytest.approx(float(plain))
