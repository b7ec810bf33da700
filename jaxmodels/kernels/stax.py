"""Analytic infinite-width NNGP and NTK layers with neural-tangents' `stax` API.

Porting is a change of import: `from neural_tangents import stax` becomes
`from jaxmodels.kernels import stax`. Every layer returns `(init_fn, apply_fn,
kernel_fn)`; `kernel_fn(x1, x2=None, get=None, *, diagonal=False)`.
"""

from ._conv import Conv as Conv
from ._kernel import Kernel as Kernel
from ._stax import (
    ABRelu as ABRelu,
    Abs as Abs,
    Dense as Dense,
    Erf as Erf,
    FanInSum as FanInSum,
    FanOut as FanOut,
    Flatten as Flatten,
    Gelu as Gelu,
    GlobalAvgPool as GlobalAvgPool,
    Identity as Identity,
    LeakyRelu as LeakyRelu,
    Relu as Relu,
    Sign as Sign,
    parallel as parallel,
    serial as serial,
)
