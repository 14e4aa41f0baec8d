"""Fetch a model's pretrained weights into the caches, and nothing else: the step before an
isolated export of `--pretrained`, whose own container has no network.

    python -m timmx.fetch MODEL

Runs in the toolchain's image (timm is there, not on the host), with network and only the
Hugging Face and torch hub caches writable. Weights already cached are not fetched again, so
with the hub out of reach a cached model still exports. Exit 0 when the weights are in the
cache; otherwise one `error:` line and exit 2.
"""

from __future__ import annotations

import sys


def fetch(name: str) -> None:
    import timm

    from timmx.modeling import pretrained_access
    from timmx.quiet import converters_quiet

    with converters_quiet(), pretrained_access(name):
        timm.create_model(name, pretrained=True)


def main(argv: list[str] | None = None) -> int:
    from timmx.errors import TimmxError, first_line

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("error: usage: python -m timmx.fetch MODEL", file=sys.stderr)
        return 2
    try:
        fetch(args[0])
    except TimmxError as exc:
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # timm's own refusal (an unknown tag, no weights for it)
        print(f"error: cannot fetch the weights of {args[0]}: {first_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from timmx._exit import fast_exit

    fast_exit(main())
