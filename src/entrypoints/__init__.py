"""HTTP app, CLI, configuration and the composition root."""
