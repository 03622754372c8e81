"""Helpers for the Trustworthy LLM Engineering course notebooks."""

__version__ = "0.1.0"
