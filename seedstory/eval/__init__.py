"""Evaluation of trained models against what they were trained to do."""
