import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import pytest

from jaxmodels.experiments.kan import toy

from .helpers import jaxtyping_off


def test_lbfgs_rejects_an_unknown_line_search_naming_the_argument():
    mlp = eqx.nn.MLP(2, 1, 4, 1, key=jr.key(0))
    x, y = jnp.zeros((3, 2)), jnp.zeros((3, 1))
    with jaxtyping_off(), pytest.raises(ValueError, match="`linesearch`"):
        toy.lbfgs(mlp, x, y, 2, "wolfe")  # pyright: ignore[reportArgumentType]
