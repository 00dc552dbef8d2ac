"""nc_jax: Neuron Campaign initialization for JAX and Flax.

Data-driven, information-bottleneck-guided weight initialization (Mao et al.,
CIKM 2021): draw many candidate neurons from an ordinary initializer, score
them on real data, and elect the best while keeping them diverse.
"""

from nc_jax._src.campaign import campaign_init as campaign_init
from nc_jax._src.campaign import campaign_select as campaign_select
from nc_jax._src.campaign import default_chunk_size as default_chunk_size
from nc_jax._src.campaign import draw_candidates as draw_candidates
from nc_jax._src.campaign import random_pick_init as random_pick_init
from nc_jax._src.election import class_quotas as class_quotas
from nc_jax._src.election import select_neurons as select_neurons
from nc_jax._src.lsuv import lsuv_linen as lsuv_linen
from nc_jax._src.lsuv import lsuv_nnx as lsuv_nnx
from nc_jax._src.model_campaign import campaign_linen as campaign_linen
from nc_jax._src.model_campaign import campaign_nnx as campaign_nnx
from nc_jax._src.model_campaign import linear_alpha as linear_alpha
from nc_jax._src.report import WalkReport as WalkReport
from nc_jax._src.scores import neuron_scores as neuron_scores
from nc_jax._src.types import CriterionDroppedWarning as CriterionDroppedWarning
from nc_jax._src.whitening import whitening_init as whitening_init

__version__ = "0.1.0"

__all__ = [
    "CriterionDroppedWarning",
    "WalkReport",
    "campaign_init",
    "campaign_linen",
    "campaign_nnx",
    "campaign_select",
    "class_quotas",
    "default_chunk_size",
    "draw_candidates",
    "linear_alpha",
    "lsuv_linen",
    "lsuv_nnx",
    "neuron_scores",
    "random_pick_init",
    "select_neurons",
    "whitening_init",
]
