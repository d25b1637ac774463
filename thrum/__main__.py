"""`python -m thrum` and the `thrum` console script.

`thrum hook …` runs after every tool call of every agent, so it goes straight to
thrum.hooks without loading the CLI (argparse and the command table cost milliseconds).
"""

import sys


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["hook"]:
        from thrum.hooks import main as hook_main

        return hook_main(argv[1:])
    from thrum.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
