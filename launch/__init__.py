"""The launchers: `python -m launch.<name> --help` (each runs through viar_jax/cli.py).

A launcher process first restarts itself, once, with glibc's malloc on transparent huge pages
where that helps (viar_jax/huge_pages.py): it must happen before anything is imported or allocated.
"""
from viar_jax import huge_pages

huge_pages.restart_launcher()
