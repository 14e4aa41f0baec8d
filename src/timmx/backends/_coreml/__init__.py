"""Helpers of the coreml backend (timmx.backends.coreml): one module per step."""
