"""The web console: pages rendered by the gateway itself (templates and static files beside them)."""
