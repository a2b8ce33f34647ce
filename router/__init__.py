"""cascadia router: the OpenAI-compatible cascade endpoint. Self-contained: imports nothing from the planner,
SkyPilot or PuLP (a router machine installs only the `router` extra). See README.md."""

from router.app import create_app
from router.config import RouterConfig, load_config, parse_config
from router.errors import ConfigError, RouterError
from router.scorers import SCORERS, make_scorer, parse_logprobs
from router.security import Secrets, load_secrets

__all__ = ["SCORERS", "ConfigError", "RouterConfig", "RouterError", "Secrets", "create_app", "load_config",
           "load_secrets", "make_scorer", "parse_config", "parse_logprobs"]
