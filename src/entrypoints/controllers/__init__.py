"""Route handlers grouped by feature: they turn HTTP into a service call, nothing more."""
