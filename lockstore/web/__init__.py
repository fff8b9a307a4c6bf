"""What the web integrations (WSGI, Flask, Django, the old stores' adapters) share."""
