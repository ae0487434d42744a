"""alpaca-operator: serve and fine-tune Alpaca-class LLMs on Kubernetes."""

__version__ = "0.1.0"
