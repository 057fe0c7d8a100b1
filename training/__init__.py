"""PyTorch training of DR grading models under class imbalance (datasets, samplers, losses,
networks, the strategy registry, the trainer, the zoo and the synthetic fundus generator)."""
