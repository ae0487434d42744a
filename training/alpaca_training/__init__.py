"""The Stanford Alpaca supervised fine-tuning recipe (transformers' Trainer, peft for LoRA), run
by the AlpacaFineTune's training Job as `torchrun ... -m alpaca_training`.

Modules: config (the run's JSON), data (records, templates, masking, collator), model
(tokenizer, embeddings, LoRA), progress (status reports), output (checkpoints, final model),
train (the run). Importing the package or its config is light: torch, transformers and peft
load only in the modules the entry point uses.
"""
