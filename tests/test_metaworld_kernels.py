"""metarl's replacements of Meta-World's quaternion and contact code: the same bits as the originals."""

import inspect
import json
import os

import numpy as np
import pytest

from metarl.cli import main

if os.environ.get("METARL_REQUIRE_METAWORLD") == "1":  # make test: never skip
    import metaworld  # noqa: F401
else:
    pytest.importorskip("metaworld", reason="no metaworld extra (pip install -e .[metaworld])")
import metaworld.policies  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: E402
from metaworld.sawyer_xyz_env import SawyerXYZEnv  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from metarl.envs import metaworld_kernels  # noqa: E402
from metarl.envs.metaworld_kernels import FastRotation, quat_from_matrix  # noqa: E402

SCRIPTED = dict(inspect.getmembers(metaworld.policies, inspect.isclass))


@pytest.fixture(autouse=True)
def kernels(monkeypatch):
    monkeypatch.delenv(metaworld_kernels.ENV_VAR, raising=False)
    assert metaworld_kernels.install()
    yield
    metaworld_kernels.install()


def test_quaternions_by_hand():
    assert np.array_equal(quat_from_matrix(np.eye(3)), [0.0, 0.0, 0.0, 1.0])
    # 180 degrees about x: R_00 is the largest, q = (4, 0, 0, 0) / 4.
    assert np.array_equal(quat_from_matrix(np.diag([1.0, -1.0, -1.0])), [1.0, 0.0, 0.0, 0.0])
    # 90 degrees about z: q = (0, 0, 2, 2) / sqrt(8).
    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert np.allclose(quat_from_matrix(quarter), [0.0, 0.0, 2 ** -0.5, 2 ** -0.5], rtol=0, atol=1e-15)


def test_quaternions_are_scipys_bit_for_bit():
    matrices = Rotation.random(20000, rng=0).as_matrix()
    ours = np.stack([FastRotation(Rotation).from_matrix(m).as_quat() for m in matrices])
    theirs = np.stack([Rotation.from_matrix(m).as_quat() for m in matrices])
    assert np.array_equal(ours, theirs)
    # Every branch of the method was taken (largest of R_00, R_11, R_22, trace).
    diagonal = np.diagonal(matrices, axis1=1, axis2=2)
    assert set(np.argmax(np.concatenate([diagonal, diagonal.sum(1, keepdims=True)], 1), 1)) == {0, 1, 2, 3}


def test_matrices_scipy_would_fix_or_refuse_go_to_scipy():
    skewed = Rotation.random(rng=1).as_matrix() + 1e-9  # not orthogonal to 1e-12: scipy orthogonalises
    assert quat_from_matrix(skewed) is None
    assert np.array_equal(FastRotation(Rotation).from_matrix(skewed).as_quat(), Rotation.from_matrix(skewed).as_quat())
    mirrored = np.diag([1.0, 1.0, -1.0])
    assert quat_from_matrix(mirrored) is None
    with pytest.raises(ValueError, match="determinant"):
        FastRotation(Rotation).from_matrix(mirrored).as_quat()
    diverged = np.eye(3)
    diverged[0, 0] = np.nan
    assert quat_from_matrix(diverged) is None
    with pytest.raises(np.linalg.LinAlgError), np.errstate(invalid="ignore"):
        FastRotation(Rotation).from_matrix(diverged).as_quat()
    # The rotation is the matrix's when it was made, as scipy's is.
    view = np.eye(3)
    rotation = FastRotation(Rotation).from_matrix(view)
    view[:] = np.diag([1.0, -1.0, -1.0])
    assert np.array_equal(rotation.as_quat(), [0.0, 0.0, 0.0, 1.0])
    # Other arguments and methods are scipy's own.
    fast = FastRotation(Rotation).from_matrix(np.eye(3))
    assert np.array_equal(fast.as_quat(scalar_first=True), [1.0, 0.0, 0.0, 0.0])
    assert np.array_equal(fast.as_matrix(), np.eye(3))
    assert np.array_equal(FastRotation(Rotation).from_euler("z", 0.0).as_quat(), [0.0, 0.0, 0.0, 1.0])


def scripted_rollout(name: str, steps: int = 100) -> list:
    """A class's scripted expert (grasps, pushes, contacts) for most of an episode, then random actions."""
    env = ALL_V3_ENVIRONMENTS[name]()
    env._freeze_rand_vec, env.seeded_rand_vec, env._set_task_called = False, True, True
    env.seed(3)
    obs, _ = env.reset(seed=3)
    words = name.removesuffix("-v3").replace("peg-insert-", "peg-insertion-").split("-")
    policy = SCRIPTED["Sawyer" + "".join(w.capitalize() for w in words) + "V3Policy"]()
    rng = np.random.default_rng(0)
    out = []
    for t in range(steps):
        action = policy.get_action(obs) if t < 80 else rng.uniform(-1, 1, 4)
        obs, reward, _, _, info = env.step(np.asarray(action, dtype=np.float32))
        out.append((obs.copy(), reward, sorted((k, float(v)) for k, v in info.items())))
    env.close()
    return out


@pytest.mark.parametrize("name", sorted(ALL_V3_ENVIRONMENTS))
@pytest.mark.filterwarnings("ignore:Constant")
def test_every_class_steps_bit_for_bit_as_with_metaworlds_code(name):
    with metaworld_kernels.stock():
        assert not metaworld_kernels.installed()
        theirs = scripted_rollout(name)
    assert metaworld_kernels.installed()
    ours = scripted_rollout(name)
    for (obs, reward, info), (obs2, reward2, info2) in zip(theirs, ours, strict=True):
        assert np.array_equal(obs, obs2) and reward == reward2 and info == info2


@pytest.mark.filterwarnings("ignore:Constant")
def test_contact_test_agrees_with_metaworlds_at_every_step_of_a_grasp():
    stock = metaworld_kernels._stock_touching_object
    env = ALL_V3_ENVIRONMENTS["pick-place-wall-v3"]()
    env._freeze_rand_vec, env.seeded_rand_vec, env._set_task_called = False, True, True
    env.seed(3)
    obs, _ = env.reset(seed=3)
    policy = SCRIPTED["SawyerPickPlaceWallV3Policy"]()
    touching = []
    for _ in range(150):
        obs, *_ = env.step(np.asarray(policy.get_action(obs), dtype=np.float32))
        for geom in (env._get_id_main_object(), env.data.geom("leftpad_geom").id):
            ours, theirs = metaworld_kernels.touching_object(env, geom), stock(env, geom)
            assert ours == theirs and type(ours) is type(theirs)
        touching.append(bool(env.touching_main_object))
    env.close()
    assert any(touching) and not all(touching)


def test_install_stock_and_the_environment_switch(monkeypatch):
    import metaworld.envs.sawyer_reach_v3 as reach

    ours = metaworld_kernels.touching_object
    assert isinstance(reach.Rotation, FastRotation) and SawyerXYZEnv.touching_object is ours
    with metaworld_kernels.stock():
        assert reach.Rotation is Rotation and SawyerXYZEnv.touching_object is not ours
        assert not metaworld_kernels.install()  # envs built for a stock baseline stay stock
    assert isinstance(reach.Rotation, FastRotation)
    metaworld_kernels.uninstall()
    monkeypatch.setenv(metaworld_kernels.ENV_VAR, "stock")
    assert not metaworld_kernels.install() and reach.Rotation is Rotation
    monkeypatch.setenv(metaworld_kernels.ENV_VAR, "Stock")  # a typo is refused, not taken as "fast"
    with pytest.raises(ValueError, match="METARL_METAWORLD_KERNELS: must be one of fast, stock"):
        metaworld_kernels.install()
    monkeypatch.delenv(metaworld_kernels.ENV_VAR)


@pytest.mark.filterwarnings("ignore:Constant")
def test_bench_reports_metaworlds_own_sync_and_with_kernels(capsys):
    args = ["bench", "--config", "experiments/ml1_reach.yaml", "--tasks", "1", "--episodes", "2", "--horizon", "5",
            "--repeats", "1", "--async-envs", "0", "--no-update", "--json"]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["sync_vector_steps_per_s"] > 0 and row["sync_kernels_steps_per_s"] > 0
