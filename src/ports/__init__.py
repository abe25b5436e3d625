"""The interfaces the services need from the outside world; adapters implement them."""
