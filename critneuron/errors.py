"""The named errors every module raises on purpose, and the self-check's warning (imports nothing from critneuron)."""

from __future__ import annotations


class CritneuronError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(CritneuronError, ValueError):
    """A configuration value or file is malformed."""


class DatasetMissingError(CritneuronError, FileNotFoundError):
    """A dataset is not in the data root and could not be downloaded."""


class UnsupportedLayerError(CritneuronError, TypeError):
    """A torch module has no MIP encoding."""


class CompactionError(CritneuronError, ValueError):
    """The pruned network cannot be rebuilt without its pruned units (e.g. a convolution keeps none)."""


class CheckpointError(CritneuronError, ValueError):
    """A file is not a readable critneuron checkpoint (corrupt, foreign or of another format)."""


class IrreproducibleError(CritneuronError, RuntimeError):
    """A stored run lacks an artifact a stage needs (a shipped store keeps no checkpoints), and
    computing it again here does not reproduce it: e.g. a training on a CPU whose float kernels
    sum in another order. The stored run is kept, with every result computed on it."""


class SolveError(CritneuronError, RuntimeError):
    """The solver ended without any usable solution (infeasible, or timed out with no incumbent).

    `details`: what is known of the failed solve, JSON-able (solver status, rounds, model sizes,
    seconds; callers add what they know, e.g. the block, its wall time and peak memory)."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = dict(details or {})


class SelfCheckWarning(UserWarning):
    """An exact-mode solution whose logits differ from the torch network's with the solved shifts
    by more than `ScoreConfig.selfcheck_tol`: the encoding or the solver tolerances are off. The
    scores are still returned, labelled `selfcheck_passed=False` in their provenance."""
