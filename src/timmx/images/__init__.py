"""The pinned Docker images `--isolated` runs backends in: recipes, identity, build, base.

Nothing here imports the docker SDK at module import time; `timmx --help` stays fast.
"""
