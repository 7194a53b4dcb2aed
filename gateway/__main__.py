"""`python -m gateway <command>`: the gateway's commands besides serving: `check` (gateway/check.py) and
`configuration-reference` (gateway/config_reference.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from gateway import check, config_reference

#: command name -> its main(argv) -> exit status
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "check": check.main, "configuration-reference": config_reference.main}


def main(argv: Sequence[str]) -> int:
    """Run the command `argv` names with the rest of it; usage and 2 when it names none."""
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m gateway {{{','.join(COMMANDS)}}} ... (--help after a command says more)",
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
