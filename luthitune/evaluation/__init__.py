"""Evaluation: base versus adapter on the same inputs."""
