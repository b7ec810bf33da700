"""Associative memories: modern Hopfield networks and layers, classical and dense
associative memories, Hebbian networks, differentiable clustering, scaling laws of
outer-product memories, and fast-weight programmers.
"""

from ._clam import (
    ClAM as ClAM,
    ClAMSolution as ClAMSolution,
    KMeansSolution as KMeansSolution,
    clam_loss as clam_loss,
    kmeans as kmeans,
    kmeans_plusplus as kmeans_plusplus,
    normalised_mutual_info as normalised_mutual_info,
    silhouette_score as silhouette_score,
)
from ._fastweights import (
    FastWeightLayer as FastWeightLayer,
    dpfp as dpfp,
    elu_plus_one as elu_plus_one,
    fast_weight_recurrent as fast_weight_recurrent,
    linear_attention as linear_attention,
)
from ._hebbian import (
    MultitaskResult as MultitaskResult,
    PhaseDiagram as PhaseDiagram,
    diluted_patterns as diluted_patterns,
    hierarchical_amplitudes as hierarchical_amplitudes,
    multitask_magnetisations as multitask_magnetisations,
    noisy_examples as noisy_examples,
    phase_diagram as phase_diagram,
    supervised_network as supervised_network,
    unsupervised_network as unsupervised_network,
)
from ._hopfield import (
    Hopfield as Hopfield,
    HopfieldLayer as HopfieldLayer,
    HopfieldPooling as HopfieldPooling,
    HopfieldSolution as HopfieldSolution,
    hopfield_energy as hopfield_energy,
    hopfield_retrieve as hopfield_retrieve,
    hopfield_update as hopfield_update,
)
from ._scaling import (
    OuterProductMemory as OuterProductMemory,
    ScalingCurve as ScalingCurve,
    build_memory as build_memory,
    expected_unseen_mass as expected_unseen_mass,
    fit_power_law as fit_power_law,
    memory_error as memory_error,
    predicted_exponent as predicted_exponent,
    random_embeddings as random_embeddings,
    sample_frequencies as sample_frequencies,
    scaling_curve as scaling_curve,
    token_weights as token_weights,
    unstored_mass as unstored_mass,
    zipf_probabilities as zipf_probabilities,
)
from ._spin import (
    AbstractSpinNetwork as AbstractSpinNetwork,
    DenseAssociativeMemory as DenseAssociativeMemory,
    FiniteSizeCapacity as FiniteSizeCapacity,
    HopfieldNetwork as HopfieldNetwork,
    RetrievalCurve as RetrievalCurve,
    SpinSolution as SpinSolution,
    critical_load as critical_load,
    finite_size_capacity as finite_size_capacity,
    hebbian_couplings as hebbian_couplings,
    krotov_hopfield_capacity as krotov_hopfield_capacity,
    max_patterns as max_patterns,
    random_patterns as random_patterns,
    retrieval_curve as retrieval_curve,
)
