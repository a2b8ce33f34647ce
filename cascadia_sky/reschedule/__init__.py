"""Re-scheduling: observe the router, detect drift, re-plan, apply the difference (docs/reschedule.md)."""
