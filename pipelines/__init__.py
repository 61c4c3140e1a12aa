"""diffusers pipelines of this repository's exports; each file is copied, self-contained, into every export that uses it."""
