"""critneuron: identifying critical neurons with mixed-integer programming (ElAraby, Wolf, Carvalho).

The public API (see docs/ARCHITECTURE.md for the modules behind it):

    >>> from critneuron import score, ScoreConfig, build_model, masks_from_scores, apply_masks, Store
"""

from critneuron.catalog import DatasetRecord, ModelRecord, Schedule, register_dataset, register_model
from critneuron.config import DataConfig, ModelConfig, PruneConfig, RunConfig, ScoreConfig, TrainConfig
from critneuron.errors import CritneuronError
from critneuron.experiments.store import Store
from critneuron.mip.scores import Scores, score
from critneuron.nets.models import build_model
from critneuron.pruning.masks import Masks, apply_masks, masks_from_scores

__all__ = [
    "CritneuronError", "DataConfig", "DatasetRecord", "Masks", "ModelConfig", "ModelRecord", "PruneConfig",
    "RunConfig", "Schedule", "ScoreConfig", "Scores", "Store", "TrainConfig", "apply_masks", "build_model",
    "masks_from_scores", "register_dataset", "register_model", "score",
]
