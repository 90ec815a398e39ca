"""cifar-pipeline: download CIFAR-10, train, evaluate and report. Plain Python; no Prefect here."""

__version__ = "0.1.0"
