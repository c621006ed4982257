"""One-off studies behind figures and design choices in docs/."""
