"""enzpy: automatic differentiation of numba ``@njit`` functions at the LLVM IR
level, in the way Enzyme does it.

    >>> import numpy as np, numba, enzpy
    >>> from enzpy import Active, Duplicated
    >>> @numba.njit
    ... def f(x, a):
    ...     return a * (x * x).sum()
    >>> x = np.arange(3.0); dx = np.zeros(3)
    >>> _, da = enzpy.autodiff(f, Duplicated(x, dx), Active(2.0))  # dx == 2*a*x
    >>> t = enzpy.autodiff(f, Duplicated(x, np.ones(3)), Duplicated(2.0, 0.0),
    ...                    mode=enzpy.Forward)  # directional derivative along ones

See docs/design.md for the contract.
"""

from . import _builtin_rules  # noqa: F401 - registers enzpy's own rules
from ._jvp_rules import register_jvp
from ._rule_config import RuleConfig
from ._rules import inactive, partials, register_partials, register_rule, stop_gradient
from ._split import split
from ._tape_budget import set_tape_budget, tape_budget
from .annotations import (
    Active,
    BatchDuplicated,
    Const,
    Duplicated,
    DuplicatedNoNeed,
    Forward,
    ForwardWithPrimal,
    Reverse,
    ReverseWithPrimal,
)
from .api import (
    autodiff,
    derivative,
    explain,
    gradient,
    hessian,
    hvp,
    jacobian,
    make_zero,
    strict,
)
from .errors import (
    ActivityError,
    CompilationError,
    EnzpyError,
    EnzpyTypeError,
    EnzpyValueError,
    InternalError,
    PiecewiseConstantError,
    TapeBudgetError,
    UnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "autodiff",
    "gradient",
    "jacobian",
    "hvp",
    "hessian",
    "make_zero",
    "derivative",
    "explain",
    "strict",
    "split",
    "register_partials",
    "register_rule",
    "register_jvp",
    "RuleConfig",
    "partials",
    "inactive",
    "stop_gradient",
    "Const",
    "Active",
    "Duplicated",
    "DuplicatedNoNeed",
    "BatchDuplicated",
    "Reverse",
    "ReverseWithPrimal",
    "Forward",
    "ForwardWithPrimal",
    "EnzpyError",
    "UnsupportedError",
    "ActivityError",
    "PiecewiseConstantError",
    "EnzpyTypeError",
    "EnzpyValueError",
    "CompilationError",
    "InternalError",
    "TapeBudgetError",
    "set_tape_budget",
    "tape_budget",
]
