"""Neural differential equations, solved with diffrax.

Chen et al., "Neural Ordinary Differential Equations" (2018); Kidger, "On Neural
Differential Equations" (2021); Kidger et al., "Neural Controlled Differential
Equations for Irregular Time Series" (2020); Grathwohl et al., "FFJORD" (2019) for the continuous
normalising flow's trace estimator.
"""

from ._cde import (
    CDEVectorField as CDEVectorField,
    NeuralCDE as NeuralCDE,
    control_path as control_path,
)
from ._cnf import CNF as CNF
from ._ode import NeuralODE as NeuralODE, ODESolution as ODESolution
from ._vector_field import (
    AbstractVectorField as AbstractVectorField,
    MLPVectorField as MLPVectorField,
)
