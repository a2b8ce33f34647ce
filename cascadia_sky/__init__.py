"""cascadia-sky: plan, launch and serve LLM model cascades."""

__version__ = "0.1.0"
