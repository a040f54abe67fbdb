"""The web: the JSON API, the status page and the HTTP admission limits."""
