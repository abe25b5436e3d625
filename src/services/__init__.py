"""Use cases: authentication, quotas, chat, keys, usage, status. They talk to ports, never to adapters."""
