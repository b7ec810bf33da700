"""Neural differential equations, solved with diffrax.

Chen et al., "Neural Ordinary Differential Equations" (2018); Kidger, "On Neural
Differential Equations" (2021); Kidger et al., "Neural Controlled Differential
Equations for Irregular Time Series" (2020); Rubanova et al., "Latent ODEs for
Irregularly-Sampled Time Series" (2019); Oh et al., "Stable Neural Stochastic
Differential Equations in Analyzing Irregular Time Series Data" (2024); Grathwohl et
al., "FFJORD" (2019) for the continuous normalising flow's trace estimator; Hasani et
al., "Liquid Time-constant Networks" (2021); "Learning in Wilson-Cowan model for
metapopulation" (2024); Pal et al., "Opening the Blackbox" (2021) and "Locally
Regularized Neural Differential Equations" (2023) for the solver-heuristic regularisers.
"""

from ._cde import (
    CDEVectorField as CDEVectorField,
    NeuralCDE as NeuralCDE,
    control_path as control_path,
)
from ._cnf import CNF as CNF
from ._latent import LatentODE as LatentODE
from ._ltc import LTC as LTC, LTCCell as LTCCell, ltc_scan as ltc_scan
from ._ode import NeuralODE as NeuralODE, ODESolution as ODESolution
from ._regularisation import (
    KineticSolution as KineticSolution,
    RegularisedSolution as RegularisedSolution,
    SolverHeuristics as SolverHeuristics,
    kinetic_solve as kinetic_solve,
    local_regulariser as local_regulariser,
    regularised_solve as regularised_solve,
    sample_end_time as sample_end_time,
    step_heuristics as step_heuristics,
)
from ._sde import NeuralSDE as NeuralSDE, StableNeuralSDE as StableNeuralSDE
from ._vector_field import (
    AbstractVectorField as AbstractVectorField,
    MLPVectorField as MLPVectorField,
)
from ._wilson_cowan import (
    WilsonCowan as WilsonCowan,
    WilsonCowanSolution as WilsonCowanSolution,
)
