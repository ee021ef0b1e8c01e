"""FedAvg on MNIST: a Flower baseline reproducing McMahan et al., AISTATS 2017."""

__version__ = "0.1.0"
