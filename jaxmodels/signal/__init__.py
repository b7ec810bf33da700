"""Signal propagation: self-normalising networks and the tools to study them.

Implements Klambauer, Unterthiner, Mayr and Hochreiter, "Self-Normalizing Neural
Networks" (NeurIPS 2017): the SELU activation and its constants, LeCun-normal
initialisation, alpha dropout, deep SELU networks (`SNN`) with a plain baseline
(`ReLUMLP`), and the closed-form moment map whose stable fixed point `(0, 1)` makes
them self-normalising.
"""

from ._dropout import AlphaDropout as AlphaDropout
from ._init import (
    he_normal as he_normal,
    lecun_normal as lecun_normal,
    reinit_linear as reinit_linear,
)
from ._moments import (
    MomentFixedPoint as MomentFixedPoint,
    moment_map_jacobian as moment_map_jacobian,
    selu_fixed_point as selu_fixed_point,
    selu_moment_map as selu_moment_map,
)
from ._selu import (
    ALPHA_01 as ALPHA_01,
    LAMBDA_01 as LAMBDA_01,
    selu as selu,
    selu_constants as selu_constants,
)
from ._snn import SNN as SNN, AbstractDeepMLP as AbstractDeepMLP, ReLUMLP as ReLUMLP
