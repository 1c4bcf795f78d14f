"""A real agent process (``aeamc-agent init`` then ``run``) enrolled with a benchmark's
coordinator through the API with a real enrollment token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import merge, stop_process, toml
from .transport import transport

#: A device on charge, cool, lightly loaded (the simulated source: this machine has no
#: battery; everything else in the agent is the real thing).
ON_CHARGE = {"battery_pct": 80, "charging": True, "cpu_temp_c": 40, "cpu_load_permille": 100}


@dataclass
class Agent:
    home: Path
    coordinator_url: str
    token: str
    settings: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] | None = field(default_factory=lambda: dict(ON_CHARGE))
    process: subprocess.Popen[bytes] | None = None
    device_id: str = ""
    #: When set, ``run`` executes under cProfile and writes its profile here.
    profile: Path | None = None

    @property
    def config_path(self) -> Path:
        return self.home / "agent.toml"

    def _cli(self) -> list[str]:
        # What the installed `aeamc-agent` command runs (entry.py): `run` is the slim launcher.
        return [sys.executable, "-m", "aeamc.agent", "--config", str(self.config_path)]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "AEAMC_SIMULATED_TELEMETRY": "1"}

    def start(self) -> Agent:
        self.home.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "state_dir": str(self.home / "state"),
            "coordinator_url": self.coordinator_url,
            "enrollment_token": self.token,
            "listen": {"host": "127.0.0.1", "port": 0},
            "mdns": {"enabled": False},
        }
        if self.telemetry is not None:
            (self.home / "profile.json").write_text(
                json.dumps({"steps": [{"at_s": 0, **self.telemetry}]})
            )
            config["telemetry"] = {
                "source": "simulated",
                "profile": str(self.home / "profile.json"),
            }
        config = merge(config, transport().agent_settings, self.settings)
        self.config_path.write_text(toml(config))
        init = subprocess.run(
            [*self._cli(), "init"],
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=60,
            check=False,
        )
        if init.returncode != 0:
            raise RuntimeError(f"aeamc-agent init: {init.stderr.strip()}")
        self.device_id = next(
            ln.split()[-1] for ln in init.stdout.splitlines() if ln.startswith("device id")
        )
        with (self.home / "agent.log").open("ab") as out:
            cmd = [*self._cli(), "run"]
            if self.profile is not None:
                cmd[1:1] = ["-m", "cProfile", "-o", str(self.profile)]
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self._env()
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)
