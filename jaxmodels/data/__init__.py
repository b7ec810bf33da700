"""Synthetic data sets for experiments and tests.

Every generator is a pure function of a PRNG key (`jax.random.key`) and Python-int
sizes: the same arguments always give the same arrays, nothing is downloaded, and the
generators compose with `jax.jit` (with the sizes static) and `jax.vmap` over keys. Each
returns a tuple `(x, y)` of arrays with a leading sample axis.
"""

from ._classification import (
    blobs as blobs,
    two_moons as two_moons,
    two_spirals as two_spirals,
)
from ._clusters import anisotropic_blobs as anisotropic_blobs, rings as rings
from ._feynman import feynman as feynman, feynman_equations as feynman_equations
from ._irregular import (
    damped_sines as damped_sines,
    irregular_spirals as irregular_spirals,
)
from ._lpn import laplace_denoising as laplace_denoising
from ._manifold import manifold as manifold
from ._patterns import binary_patterns as binary_patterns
from ._pde import (
    antiderivative_1d as antiderivative_1d,
    burgers_1d as burgers_1d,
    darcy_2d as darcy_2d,
    diffusion_operator_2d as diffusion_operator_2d,
    poisson_2d as poisson_2d,
)
from ._regression import regression_1d as regression_1d, regression_nd as regression_nd
from ._sequence import (
    copy_task as copy_task,
    parity as parity,
    sine_sequences as sine_sequences,
)
from ._split import standardise as standardise, train_test_split as train_test_split
