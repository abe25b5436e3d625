"""ollama-gate: a self-hosted gateway for Ollama."""

__version__ = "0.1.0"
