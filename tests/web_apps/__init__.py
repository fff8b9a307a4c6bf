"""Small web applications the web integration tests serve, and the helpers that drive them."""
