"""SEED-Story on Ray: train and serve multimodal long-story generation."""

__version__ = "0.1.0"
