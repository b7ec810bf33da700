"""Infinite-width kernels: analytic NNGP and NTK with a neural-tangents-compatible
`stax` namespace, the empirical NTK of any Equinox model, kernel predictions (NNGP
posterior, NTK gradient flow), criticality and finite-width corrections, scale mixtures
of NNGPs, and infinite-depth NTK classifiers.
"""

from . import predict as predict, stax as stax
from ._criticality import (
    bivariate_gaussian_expectation as bivariate_gaussian_expectation,
    critical_initialisation as critical_initialisation,
    depth_scales as depth_scales,
    gaussian_expectation as gaussian_expectation,
    hermite_rule as hermite_rule,
    input_gradient_norms as input_gradient_norms,
    kernel_fixed_point as kernel_fixed_point,
    kernel_recursion as kernel_recursion,
    kernel_step as kernel_step,
    order_chaos_boundary as order_chaos_boundary,
    susceptibilities as susceptibilities,
)
from ._deep import (
    DeepKernel as DeepKernel,
    DualActivation as DualActivation,
    classify_activation as classify_activation,
    deep_kernel as deep_kernel,
    deep_ntk as deep_ntk,
    deep_ntk_classifier as deep_ntk_classifier,
    hermite_activation as hermite_activation,
    nearest_neighbour_activation as nearest_neighbour_activation,
    relu_activation as relu_activation,
    singular_activation as singular_activation,
    singular_exponent as singular_exponent,
)
from ._empirical import (
    empirical_kernel_fn as empirical_kernel_fn,
    empirical_nngp as empirical_nngp,
    empirical_nngp_fn as empirical_nngp_fn,
    empirical_ntk as empirical_ntk,
    empirical_ntk_fn as empirical_ntk_fn,
    ntk_operator as ntk_operator,
)
from ._finite_width import (
    edgeworth_cdf as edgeworth_cdf,
    edgeworth_density as edgeworth_density,
    four_point_vertex as four_point_vertex,
    hermite_correction_coefficient as hermite_correction_coefficient,
)
from ._kernel import Kernel as Kernel
from ._mixture import (
    AbstractScalePrior as AbstractScalePrior,
    DiscreteScale as DiscreteScale,
    InverseGammaScale as InverseGammaScale,
    LogNormalScale as LogNormalScale,
    ScaleMixtureProcess as ScaleMixtureProcess,
    StudentTProcess as StudentTProcess,
    sample_mixture_prior as sample_mixture_prior,
    sample_scale_mixture as sample_scale_mixture,
    scale_mixture_process as scale_mixture_process,
    student_t_cdf as student_t_cdf,
    student_t_process as student_t_process,
)
from ._structured import structured_ntk as structured_ntk
