"""The paper's datasets and models as catalog records (schedules: PAPER_SPEC §4; τ: §7)."""

from __future__ import annotations

from critneuron.catalog.architectures import fc3, fc4, lenet5, vgg16
from critneuron.catalog.records import DatasetRecord, ModelRecord, Schedule, register_dataset, register_model

RMSPROP_30 = Schedule(epochs=30, optimizer="rmsprop", lr=1e-3)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

MNIST = register_dataset(DatasetRecord("mnist", ("MNIST/raw",), RMSPROP_30, torchvision="MNIST"))
FASHION_MNIST = register_dataset(
    DatasetRecord("fashion-mnist", ("FashionMNIST/raw",), RMSPROP_30, torchvision="FashionMNIST"))
CIFAR10 = register_dataset(DatasetRecord(
    "cifar10", ("cifar-10-batches-py", "CIFAR10-jpeg/cifar10-jpeg.zip"),
    Schedule(epochs=256, optimizer="sgd", lr=1e-2, weight_decay=5e-4), torchvision="CIFAR10",
    augment=True, tau=0.3, jpeg_copy="CIFAR10-jpeg/cifar10-jpeg.zip", class_names=CIFAR10_CLASSES,
    transfer_schedule=Schedule(epochs=256, optimizer="sgd", lr=0.1, weight_decay=5e-4)))
KMNIST = register_dataset(DatasetRecord("kmnist", ("KMNIST/raw",), RMSPROP_30, torchvision="KMNIST"))

FC3 = register_model(ModelRecord("fc3", fc3, tau=0.1))
FC4 = register_model(ModelRecord("fc4", fc4, tau=0.1))
LENET5 = register_model(ModelRecord("lenet5", lenet5, tau=0.2, finetune_epochs=(("mnist", 2),)))
VGG16 = register_model(ModelRecord(
    "vgg16", vgg16, tau=0.2, width_scalable=True, training="decoupled",
    schedule=Schedule(epochs=30, optimizer="sgd", lr=0.1, weight_decay=5e-4)))
