"""The discrete-event simulator: a plan replayed against a trace, and the baselines it is compared with."""
