"""The ``aeamc-agent`` command: ``run`` goes straight to the launcher, the rest to ``cli.py``.

``aeamc-agent run`` (the service) is a launcher that only starts and watches the daemon for
as long as the device is up. Importing ``cli.py`` to get there would keep the HTTP client,
the protocol's signatures, the TLS certificates and the telemetry readers in memory in a
process that never uses them — as much again as the daemon's own libraries. So this module
reads just enough of the command line to recognise ``run``, and the launcher's path imports
only the standard library, the configuration (``config.py``) and the slot files
(``slots.py``).

What ``run`` used to refuse itself (an unusable identity key, a telemetry source that
cannot be read) the daemon refuses at its start with the same message and status 78,
which the launcher passes on as its own. A configuration that cannot be read at all is
refused here, before any daemon starts.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: Options before the command that take a value, and those that do not (cli.py's).
_VALUED = ("--config",)
_FLAGS = ("-v", "--verbose")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    run = _as_run(args)
    if run is None:
        from .cli import main as cli_main

        return cli_main(args)
    return _run(*run, args)


def _as_run(args: list[str]) -> tuple[str | None, int] | None:
    """``(--config value, verbosity)`` if ``args`` is exactly a ``run`` command, else None
    (anything unusual — help, a typo, another command — is left to cli.py's parser)."""
    config: str | None = None
    verbose = 0
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUED and i + 1 < len(args):
            config = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.partition("=")[2]
        elif arg in _FLAGS:
            verbose += 1
        elif len(arg) > 2 and arg.startswith("-") and set(arg[1:]) == {"v"}:
            verbose += len(arg) - 1
        elif arg == "run" and i == len(args) - 1:
            return config, verbose
        else:
            return None
        i += 1
    return None


def _run(config_value: str | None, verbose: int, args: list[str]) -> int:
    from aeamc.shared.exits import EX_CONFIG
    from aeamc.shared.runtime.logs import configure as configure_logs
    from aeamc.shared.runtime.logs import print_error

    from .config import ConfigError, config_path, load_config

    configure_logs(verbose)
    path = config_path(config_value)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print_error(f"aeamc-agent: configuration error: {exc}")
        return EX_CONFIG
    if not config.updates_enabled:
        # No launcher: the daemon runs in this process, so nothing is saved by staying slim.
        from .cli import main as cli_main

        return cli_main(args)
    from .launcher import Launcher

    return Launcher(config, path, verbose).run()
