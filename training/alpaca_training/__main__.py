"""`python -m alpaca_training` (under torchrun): one Stanford Alpaca fine-tuning run."""

from alpaca_training.train import main

raise SystemExit(main())
