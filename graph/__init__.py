"""The protocol as a LangGraph state machine (installed as ``luthitune.graph``)."""
