"""One module per technology, each implementing a port."""
