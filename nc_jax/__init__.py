"""nc_jax: Neuron Campaign initialization for JAX and Flax.

Data-driven, information-bottleneck-guided weight initialization (Mao et al.,
CIKM 2021): draw many candidate neurons from an ordinary initializer, score
them on real data, and elect the best while keeping them diverse.
"""

from nc_jax._src.campaign import campaign_init as campaign_init
from nc_jax._src.campaign import campaign_select as campaign_select
from nc_jax._src.campaign import draw_candidates as draw_candidates
from nc_jax._src.scores import CriterionDroppedWarning as CriterionDroppedWarning
from nc_jax._src.scores import neuron_scores as neuron_scores
from nc_jax._src.select import class_quotas as class_quotas
from nc_jax._src.select import select_neurons as select_neurons

__version__ = "0.1.0"

__all__ = [
    "CriterionDroppedWarning",
    "campaign_init",
    "campaign_select",
    "class_quotas",
    "draw_candidates",
    "neuron_scores",
    "select_neurons",
]
