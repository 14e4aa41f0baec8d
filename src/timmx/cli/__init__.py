"""The `timmx` command line. Imports neither torch nor timm at start-up."""
