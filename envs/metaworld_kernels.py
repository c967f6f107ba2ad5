"""Faster, bit-identical replacements for the two hottest pieces of a Meta-World step's Python code.

Profiled over 3,000 steps of Meta-World 3.1.1 (``README.md``, Meta-World section), a step spends
more time in two small pieces of Python than in MuJoCo's physics:

- **The observation's quaternions.** Every class with an object converts the object's rotation
  matrix to a quaternion with ``scipy.spatial.transform.Rotation.from_matrix(m).as_quat()``: about
  50 us a call for one 3x3 matrix, most of it array-API dispatch, input validation and the
  orthogonality check. That is 30% of a ``reach-v3`` step and 18% of ``pick-place-v3``'s.
- **Whether the gripper touches the object** (``SawyerXYZEnv.touching_object``, in the reward of
  15 classes): two Python loops over ``data.contact``, each building a Python object per contact
  per step. 28% of a ``pick-place-v3`` step.

:func:`install` replaces both, for every Meta-World env of the process, with code that computes
the same floating-point operations in the same order, so observations, rewards and successes are
bit for bit those of Meta-World's own code (tested on every class, on random rotations and on
scripted grasps). :func:`stock` puts Meta-World's code back for a block (the benchmark's baseline).
``METARL_METAWORLD_KERNELS=stock`` in the environment keeps Meta-World's code throughout, should a
future scipy or Meta-World release change what these replicate (the tests then fail).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

#: Set to ``stock`` to keep Meta-World's own code (``fast``, the default: metarl's).
ENV_VAR = "METARL_METAWORLD_KERNELS"
KERNEL_CHOICES = ("fast", "stock")
# Meta-World modules whose ``Rotation`` global was replaced: module -> scipy's Rotation.
_patched_modules: dict[Any, Any] = {}
_stock_touching_object: Any = None
_suspended = 0  # inside stock(): install() does nothing


def quat_from_matrix(matrix: np.ndarray) -> np.ndarray | None:
    """The unit quaternion ``[x, y, z, w]`` of a 3x3 rotation matrix ``R``, as scipy computes it.

    scipy (the ``from_matrix``/``_from_matrix_orthogonal`` of its Cython backend, 1.15-1.17) takes
    the largest of ``R_00, R_11, R_22, tr R`` (the first on ties) and builds the quaternion from the
    matching row of Markley's method, then divides by its norm:

    - ``tr R`` largest: ``q = (R_21 - R_12, R_02 - R_20, R_10 - R_01, 1 + tr R)``
    - ``R_ii`` largest, ``j = i+1 mod 3``, ``k = j+1 mod 3``:
      ``q_i = 1 - tr R + 2 R_ii``, ``q_j = R_ji + R_ij``, ``q_k = R_ki + R_ik``, ``q_w = R_kj - R_jk``

    ``q / sqrt(q_x^2 + q_y^2 + q_z^2 + q_w^2)``, summed in that order. Returns None where scipy
    would first reorthogonalise the matrix (its Gram matrix is not the identity to 1e-12), reject
    it (determinant not positive) or fail (NaN): the caller then hands the matrix to scipy. Rotation matrices
    from MuJoCo are orthogonal to about 1e-16, so that never happens in a Meta-World step.
    """
    (a, b, c), (d, e, f), (g, h, i) = matrix.tolist()
    # scipy's np.isclose(R R^T, I, atol=1e-12) (rtol 1e-5), with a margin of 10x on each side so that
    # rounding differences (about 1e-16) between its matmul and these sums can never flip it.
    off = max(abs(a * d + b * e + c * f), abs(a * g + b * h + c * i), abs(d * g + e * h + f * i))
    diag = max(abs(a * a + b * b + c * c - 1), abs(d * d + e * e + f * f - 1), abs(g * g + h * h + i * i - 1))
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    if not (off <= 1e-13 and diag <= 1e-6 and det >= 0.5):  # NaN fails these too
        return None
    rows = ((a, b, c), (d, e, f), (g, h, i))
    trace = a + e + i
    choice, largest = 0, a
    for index, value in ((1, e), (2, i), (3, trace)):
        if value > largest:
            choice, largest = index, value
    if choice == 3:
        q = [h - f, c - g, d - b, 1 + trace]
    else:
        q = [0.0, 0.0, 0.0, 0.0]
        x = choice
        y = (x + 1) % 3
        z = (y + 1) % 3
        q[x] = 1 - trace + 2 * rows[x][x]
        q[y] = rows[y][x] + rows[x][y]
        q[z] = rows[z][x] + rows[x][z]
        q[3] = rows[z][y] - rows[y][z]
    norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    return np.array([q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm])


class _MatrixRotation:
    """What ``Rotation.from_matrix(m)`` returns here: ``as_quat()`` computed by :func:`quat_from_matrix`;
    anything else (other arguments, other methods) is scipy's."""

    __slots__ = ("_matrix", "_scipy")

    def __init__(self, matrix: np.ndarray, scipy_rotation: Any):
        # A copy, as scipy keeps: Meta-World passes a view of the simulator's state.
        self._matrix, self._scipy = matrix.copy(), scipy_rotation

    def as_quat(self, canonical: bool = False, *, scalar_first: bool = False) -> np.ndarray:
        if not canonical and not scalar_first:
            quat = quat_from_matrix(self._matrix)
            if quat is not None:
                return quat
        return self._scipy_rotation().as_quat(canonical=canonical, scalar_first=scalar_first)

    def _scipy_rotation(self) -> Any:
        return self._scipy.from_matrix(self._matrix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scipy_rotation(), name)


class FastRotation:
    """Stands in for scipy's ``Rotation`` class inside Meta-World's env modules: ``from_matrix`` of
    one 3x3 float matrix defers the conversion to :class:`_MatrixRotation`; every other use is
    scipy's own."""

    def __init__(self, scipy_rotation: Any):
        self._scipy = scipy_rotation

    def from_matrix(self, matrix: Any, **kwargs: Any) -> Any:
        if not kwargs and isinstance(matrix, np.ndarray) and matrix.shape == (3, 3) and matrix.dtype == np.float64:
            return _MatrixRotation(matrix, self._scipy)
        return self._scipy.from_matrix(matrix, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scipy, name)


def touching_object(self: Any, object_geom_id: int) -> Any:
    """``SawyerXYZEnv.touching_object`` without a Python object per contact: whether both gripper
    pads push on the object, i.e. the constraint forces ``efc_force[efc_address]`` of the contacts
    between each pad and the object sum to more than 0.

    Same result, bit for bit: the same contacts in the same order, summed by the same ``sum`` over
    numpy float64 scalars (an ``efc_address`` of -1 reads the last force, as the original does).
    """
    contact = self.data.contact
    geom1, geom2 = contact.geom1, contact.geom2
    with_object = (geom1 == object_geom_id) | (geom2 == object_geom_id)
    if not with_object.any():
        return False  # the original: 0 < sum([]) is False
    efc_force, efc_address = self.data.efc_force, contact.efc_address
    forces = []
    for pad in ("leftpad_geom", "rightpad_geom"):
        pad_id = self.data.geom(pad).id
        touching = with_object & ((geom1 == pad_id) | (geom2 == pad_id))
        forces.append(sum(efc_force[efc_address[touching]]))
    return 0 < forces[0] and 0 < forces[1]


def _meta_world_modules() -> list[Any]:
    import metaworld.env_dict  # noqa: F401  (imports every env module)

    return [module for name, module in list(sys.modules.items())
            if (name == "metaworld" or name.startswith("metaworld.")) and module is not None]


def install() -> bool:
    """Replace Meta-World's quaternion conversion and contact test in this process (idempotent).
    Returns whether the replacements are in place (not with ``METARL_METAWORLD_KERNELS=stock``)."""
    global _stock_touching_object
    if _stock_touching_object is not None:
        return True
    choice = os.environ.get(ENV_VAR, "") or "fast"
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"{ENV_VAR}: must be one of {', '.join(KERNEL_CHOICES)} (unset: fast), got {choice!r}")
    if _suspended or choice == "stock":
        return False
    from metaworld.sawyer_xyz_env import SawyerXYZEnv
    from scipy.spatial.transform import Rotation

    for module in _meta_world_modules():
        if getattr(module, "Rotation", None) is Rotation:
            _patched_modules[module] = Rotation
            module.Rotation = FastRotation(Rotation)
    _stock_touching_object = SawyerXYZEnv.touching_object
    SawyerXYZEnv.touching_object = touching_object
    return True


def uninstall() -> None:
    """Put Meta-World's own code back."""
    global _stock_touching_object
    if _stock_touching_object is None:
        return
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    for module, rotation in _patched_modules.items():
        module.Rotation = rotation
    _patched_modules.clear()
    SawyerXYZEnv.touching_object = _stock_touching_object
    _stock_touching_object = None


def installed() -> bool:
    return _stock_touching_object is not None


@contextlib.contextmanager
def stock() -> Iterator[None]:
    """Meta-World's own code inside the block (for a baseline; envs built in it do not install the
    replacements), the replacements again after it if they were in place before."""
    global _suspended
    was = installed()
    uninstall()
    _suspended += 1
    try:
        yield
    finally:
        _suspended -= 1
        if was:
            install()
