"""The web page, served by the front."""
