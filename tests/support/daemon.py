"""The folder a daemon run by the tests or the benchmarks owns: its configuration file
and its state directory, both below one root, so one ``rm -r`` removes all it wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass
class DaemonFolder:
    root: Path
    #: The configuration file's name, as the installed package names it.
    config_name: ClassVar[str]

    @property
    def config_path(self) -> Path:
        return self.root / self.config_name

    @property
    def state_dir(self) -> Path:
        return self.root / "state"
