"""What the RL ecosystem's own clients rely on: Gymnasium's three autoreset modes, one dtype per info
key, action masks on every face, any grad mode, and a trained main model that travels with its agent."""

from __future__ import annotations

import json
from collections import defaultdict

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import quiet_run_flags
from gymnasium.vector import AutoresetMode

import dynalay_env  # noqa: F401  (registers DynaLay-v0)
from agents import evaluate, train
from dynalay_env import DynaLayEnv, DynaLaySB3VecEnv, DynaLayVectorEnv, evaluate_policy

QUICK = {"dataset": "digits", "pretrain_epochs": 0, "cotrain": False}


def _vector(mode, n=3, **settings):
    return gym.make_vec("DynaLay-v0", num_envs=n, vectorization_mode="vector_entry_point", autoreset_mode=mode, **{**QUICK, **settings})


# ---- autoreset modes: the scenarios Gymnasium's own vector envs are tested with -------------------
@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_autoreset_mode_is_in_metadata_and_on_the_env_from_enum_or_value(mode):
    for given in (mode, mode.value):
        envs = _vector(given)
        assert envs.metadata["autoreset_mode"] == mode and envs.autoreset_mode == mode
    assert DynaLayVectorEnv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP  # the class default is untouched
    with pytest.raises(ValueError, match="autoreset_mode must be one of"):
        _vector("sometimes")


def test_next_step_autoreset():
    envs = _vector(AutoresetMode.NEXT_STEP)
    first, info = envs.reset(seed=0)
    assert info == {}
    # row 0 answers at once; rows 1 and 2 iterate a layer
    obs, rewards, terminated, truncated, info = envs.step(np.array([0, 1, 1]))
    assert terminated.tolist() == [True, False, False] and not truncated.any()
    assert "final_obs" not in info and info["_correct"].tolist() == [True, False, False]
    np.testing.assert_array_equal(obs[0], first[0])  # the last observation of row 0's episode (NOP changes nothing)
    assert rewards[0] == pytest.approx(0.5 * float(info["correct"][0]))
    # next step: row 0 starts a new episode (its action ignored, reward 0), row 1 answers
    obs, rewards, terminated, truncated, info = envs.step(np.array([3, 0, 1]))
    assert terminated.tolist() == [False, True, False] and rewards[0] == 0.0
    assert obs[0][envs.unwrapped.engine.layout.step_fraction] == 0.0
    obs, rewards, terminated, _, _ = envs.step(np.array([0, 2, 0]))
    assert terminated.tolist() == [True, False, True] and rewards[1] == 0.0


def test_same_step_autoreset():
    envs = _vector(AutoresetMode.SAME_STEP)
    first, _ = envs.reset(seed=0)
    obs, rewards, terminated, _, info = envs.step(np.array([0, 1, 1]))
    assert terminated.tolist() == [True, False, False]
    assert info["_final_obs"].tolist() == [True, False, False] and info["_final_info"].tolist() == [True, False, False]
    np.testing.assert_array_equal(info["final_obs"][0], first[0])
    assert info["final_obs"][1] is None and info["final_obs"][0] in envs.single_observation_space
    assert set(info["final_info"]) >= {"correct", "_correct", "compute", "path"}
    assert obs[0][envs.unwrapped.engine.layout.step_fraction] == 0.0  # already the next episode


def test_disabled_autoreset_and_partial_reset():
    envs = _vector(AutoresetMode.DISABLED)
    with pytest.raises(ValueError, match="the first reset must start every env"):
        envs.reset(options={"reset_mask": np.array([True, False, False])})
    envs.reset(seed=0)
    _, _, terminated, _, info = envs.step(np.array([0, 1, 1]))
    assert terminated.tolist() == [True, False, False] and "final_obs" not in info
    # a finished row stays idle until it is reset
    _, rewards, terminated, _, _ = envs.step(np.array([2, 0, 1]))
    assert rewards[0] == 0.0 and terminated.tolist() == [False, True, False]
    obs, info = envs.reset(options={"reset_mask": np.array([True, True, False])})
    assert info == {} and obs[0][envs.unwrapped.engine.layout.step_fraction] == 0.0
    assert obs[2][envs.unwrapped.engine.layout.step_fraction] > 0  # row 2 kept its episode
    for bad in (np.array([True]), np.array([[True, True, True]]), np.array([1, 1, 0]), np.array([1.0, 1.0, 0.0])):
        with pytest.raises(ValueError, match="reset_mask must be a bool array of shape"):
            envs.reset(options={"reset_mask": bad})


def _episodes(mode, steps=60, n=6):
    """Per row, the records of the episodes it finished, under a policy of the observation.

    Every row plays the same script (FPI on L1, then L2, then answer), read from its step counter,
    so all rows end their episodes on the same steps in every mode. That matters because NEXT_STEP
    spends a step on each reset: rows whose episodes ended on different steps would reset in
    different groups, draw their next samples in a different order, and the modes would differ
    by design rather than by a bug."""
    envs = _vector(mode, n)
    layout = envs.unwrapped.engine.layout if hasattr(envs.unwrapped, "engine") else envs.engine.layout
    script = np.array([1, 2, 0, 0, 0, 0, 0])
    obs, _ = envs.reset(seed=3)
    rows = defaultdict(list)
    for _ in range(steps):
        actions = script[np.rint(obs[:, layout.step_fraction] * 6).astype(np.int64)]
        obs, _, terminated, _, info = envs.step(actions)
        done = np.flatnonzero(terminated)
        record = info.get("final_info") if mode == AutoresetMode.SAME_STEP else info
        for i in done:
            rows[i].append((int(record["sample"][i]), int(record["steps"][i]), bool(record["correct"][i]), float(record["return"][i])))
        if mode == AutoresetMode.DISABLED and done.size:
            obs, _ = envs.reset(options={"reset_mask": terminated})
    return rows


def test_the_three_modes_play_the_same_episodes():
    same, nxt, disabled = (_episodes(m) for m in (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED))
    for i in range(6):
        k = min(len(same[i]), len(nxt[i]), len(disabled[i]))
        assert k >= 5
        assert same[i][:k] == nxt[i][:k] == disabled[i][:k]


def test_gymnasium_vector_wrappers_accept_next_step_mode():
    envs = gym.wrappers.vector.NormalizeObservation(_vector(AutoresetMode.NEXT_STEP))
    envs.reset(seed=0)
    for _ in range(5):
        envs.step(np.zeros(3, dtype=np.int64))


# ---- infos ---------------------------------------------------------------------------------------
def test_every_info_key_has_one_dtype_and_shape_at_reset_and_step():
    env = DynaLayEnv(**QUICK)
    seen = defaultdict(set)

    def note(info):
        for key, value in info.items():
            seen[key].add((type(value).__name__, getattr(value, "dtype", None), getattr(value, "shape", ())))

    _, info = env.reset(seed=0)
    note(info)
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, _, terminated, _, info = env.step(int(rng.integers(0, 4)))
        note(info)
        if terminated:
            _, info = env.reset()
            note(info)
    assert {k: v for k, v in seen.items() if len(v) != 1} == {}
    assert next(iter(seen["lam"]))[1] == np.float32 and next(iter(seen["label"]))[1] == np.int64


def test_a_sync_vector_env_of_single_envs_batches_infos_cleanly():
    """What torchrl's GymEnv("DynaLay-v0", num_envs=N) builds: Gymnasium batches each key's values
    into one array, which fails or changes dtype when a key's dtype differs between steps."""
    envs = gym.make_vec("DynaLay-v0", num_envs=3, vectorization_mode="sync", **QUICK)
    _, info = envs.reset(seed=0)
    dtypes = {k: v.dtype for k, v in info.items()}
    for step in range(40):
        _, _, _, _, info = envs.step(np.full(3, step % 4))
        for key in set(dtypes) & set(info):
            assert info[key].dtype == dtypes[key], key


# ---- action masks --------------------------------------------------------------------------------
def test_action_masks_on_every_face():
    single = DynaLayEnv(**QUICK)
    single.reset(seed=0)
    assert single.action_masks().tolist() == [True] * 4
    vector = DynaLayVectorEnv(5, **QUICK)
    vector.reset(seed=0)
    assert vector.action_masks().shape == (5, 4) and vector.action_masks().all()
    on_device = DynaLayVectorEnv(2, torch_arrays=True, **QUICK)
    on_device.reset(seed=0)
    assert isinstance(on_device.action_masks(), torch.Tensor)
    sb3 = DynaLaySB3VecEnv(3, **QUICK)
    sb3.reset()
    masks = sb3.env_method("action_masks")
    assert len(masks) == 3 and all(m.shape == (4,) and m.all() for m in masks)
    assert [m.shape for m in sb3.env_method("action_masks", indices=[0, 2])] == [(4,), (4,)]
    # an idle row (DISABLED mode, finished) may only NOP
    idle = _vector(AutoresetMode.DISABLED, 2)
    idle.reset(seed=0)
    idle.step(np.array([0, 1]))
    assert idle.unwrapped.action_masks().tolist() == [[True, False, False, False], [True] * 4]


def test_maskable_ppo_trains_on_the_sb3_face():
    sb3_contrib = pytest.importorskip("sb3_contrib")
    env = DynaLaySB3VecEnv(8, dataset="digits", pretrain_epochs=0)
    model = sb3_contrib.MaskablePPO("MlpPolicy", env, n_steps=32, batch_size=64, seed=0)
    model.learn(512)
    assert model.num_timesteps >= 512 and env.engine.trainer.updates > 0


# ---- grad modes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_loop_under_any_grad_mode_cotrains(mode):
    with mode():
        env = gym.make("DynaLay-v0", dataset="digits", pretrain_epochs=1, cotrain_every=8, progress=False)
        before = [p.detach().clone() for p in env.unwrapped.engine.model.parameters()]
        env.reset(seed=0)
        for step in range(120):
            _, _, terminated, _, _ = env.step(step % 4)
            if terminated:
                env.reset()
    engine = env.unwrapped.engine
    assert engine.trainer.updates >= 3 and np.isfinite(engine.trainer.last_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, engine.model.parameters()))
    env.reset()
    env.step(0)  # and stepping it afterwards, outside that mode, still works


# ---- a trained system is the agent and its main model ------------------------------------------------
def test_the_saved_main_model_travels_with_the_agent(tmp_path):
    train.main(
        [
            "--dataset",
            "digits",
            "--imitation-samples",
            "64",
            "--algo",
            "ppo",
            "--total-timesteps",
            "1024",
            "--num-envs",
            "8",
            "--n-steps",
            "64",
            "--batch-size",
            "64",
            "--pretrain-epochs",
            "2",
            *quiet_run_flags(tmp_path, "r"),
        ]
    )
    run = tmp_path / "r"
    recorded = json.loads((run / "eval.json").read_text())
    ours = evaluate.load_run(run, "cpu")
    # a client that rebuilds the env from the id gets the co-trained model back from main_model.pt
    env = gym.make("DynaLay-v0", dataset="digits", main_model=str(run / "main_model.pt"), cotrain=False, pretrain_epochs=0)
    engine = env.unwrapped.engine
    for a, b in zip(engine.model.state_dict().values(), ours.engine.model.state_dict().values()):
        assert torch.equal(a, b)
    policy = ours.agent.policy()
    report = evaluate_policy(engine.model, engine.splits, policy, reward=engine.reward, max_steps=engine.max_steps)
    assert report.accuracy == pytest.approx(recorded["accuracy"]) and report.compute == pytest.approx(recorded["compute"])
    # ... and SB3's own zip plus evaluate_policy work on it, with Monitor statistics and no warning
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy as sb3_evaluate

    agent = PPO.load(run / "agent.zip", device="cpu")
    face = DynaLaySB3VecEnv(4, dataset="digits", main_model=str(run / "main_model.pt"), cotrain=False, pretrain_epochs=0)
    with warnings_as_errors():
        mean_return, _ = sb3_evaluate(agent, face, n_eval_episodes=40)
    assert -1.0 < mean_return <= 0.5
    # a fresh main model (what clients got before) is a different network
    fresh = gym.make("DynaLay-v0", dataset="digits", cotrain=False, pretrain_epochs=0).unwrapped.engine
    assert not torch.equal(fresh.model.head.weight, engine.model.head.weight)


def warnings_as_errors():
    import warnings

    manager = warnings.catch_warnings()
    manager.__enter__()
    warnings.simplefilter("error", UserWarning)

    class Exit:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            manager.__exit__(*exc)

    return Exit()


def test_save_main_model_writes_on_close(tmp_path):
    path = tmp_path / "mm.pt"
    env = gym.make("DynaLay-v0", save_main_model=str(path), **QUICK)
    env.reset(seed=0)
    env.close()
    loaded = gym.make("DynaLay-v0", main_model=str(path), **QUICK).unwrapped.engine.model
    assert torch.equal(loaded.head.weight, env.unwrapped.engine.model.head.weight)
    with pytest.raises(ValueError, match="does not fit this environment's main model for 'parity'"):
        gym.make("DynaLay-v0", main_model=str(path), **{**QUICK, "dataset": "parity"})
