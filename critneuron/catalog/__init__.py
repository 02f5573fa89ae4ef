"""The catalog of datasets and models: one frozen record each (see `records`), the paper's
registered on import (`paper`)."""

from critneuron.catalog import paper  # noqa: F401  (registers the paper's records)
from critneuron.catalog.records import (
    DatasetRecord, ModelRecord, Schedule, dataset_names, dataset_record, model_names, model_record,
    paper_finetune_epochs, paper_schedule, paper_threshold, register_dataset, register_model, transfer_schedule,
)

__all__ = ["DatasetRecord", "ModelRecord", "Schedule", "dataset_names", "dataset_record", "model_names",
           "model_record", "paper_finetune_epochs", "paper_schedule", "paper_threshold", "register_dataset",
           "register_model", "transfer_schedule"]
