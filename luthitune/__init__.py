"""LuthiTune: consensual alignment via self-refinement, on a local LLM."""

__version__ = "0.1.0"
