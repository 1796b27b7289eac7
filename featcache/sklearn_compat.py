"""The scikit-learn names that have no public home, imported here and nowhere else.

``Interval``, ``StrOptions`` and ``InvalidParameterError`` (the ``_parameter_constraints``
table our heads share with scikit-learn's), ``generate_invalid_param_val`` (tests draw bad
values with it) and ``LinearClassifierMixin`` (``decision_function``/``predict`` of a linear
head) live in private modules. When scikit-learn moves one, importing this module fails
with a message naming it and the installed scikit-learn version (``tests/test_estimators.py``
imports it).
"""

from __future__ import annotations

import sklearn

try:
    from sklearn.linear_model._base import LinearClassifierMixin
    from sklearn.utils._param_validation import (
        Interval,
        InvalidParameterError,
        StrOptions,
        generate_invalid_param_val,
    )
except ImportError as exc:
    raise ImportError(
        f"scikit-learn {sklearn.__version__} moved a private name featcache uses ({exc}); "
        "import it from its new module in featcache/sklearn_compat.py"
    ) from exc

__all__ = [
    "Interval",
    "InvalidParameterError",
    "LinearClassifierMixin",
    "StrOptions",
    "generate_invalid_param_val",
]
