"""Small, documented fixes to third-party packages, each applied by an ``apply()`` call (see README.md)."""
