"""Neural operators and learned solvers: maps between function spaces.

Fourier neural operators in one, two and three dimensions, MgNO (multigrid-parameterised
operator layers), DeepONet, a converter that turns a convolutional network into a
discretisation-consistent operator, and the deep conjugate direction method, a learned
iterative solver for symmetric positive-definite systems.
"""

from ._convert import (
    DiscretisationConsistentCNN as DiscretisationConsistentCNN,
    GlobalMeanPool as GlobalMeanPool,
    IntegralConv as IntegralConv,
    to_operator as to_operator,
)
from ._dcdm import (
    DCDMNetwork as DCDMNetwork,
    DCDMSolution as DCDMSolution,
    dcdm_loss as dcdm_loss,
    dcdm_solve as dcdm_solve,
    jacobi_preconditioner as jacobi_preconditioner,
)
from ._deeponet import DeepONet as DeepONet
from ._fno import FNO as FNO, SpectralConv as SpectralConv
from ._mgno import MgNO as MgNO, MgNOLayer as MgNOLayer, VCycle as VCycle
