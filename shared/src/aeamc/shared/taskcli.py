"""``aeamc task``: a client submits work to a coordinator and gets its verified result.

``submit --wasm kernel.wasm --input data.bin --chunks 64`` uploads the module and the
input unless the coordinator already holds them (by digest), submits a ``wasm`` task and
prints its id; ``--wait`` follows it to the end, ``--verified`` to a verified result, and
``-o`` writes the result (the chunks' outputs, in order). ``status``, ``result`` and
``list`` read tasks back. Connection settings: :mod:`aeamc.shared.taskclient`.

While it follows a task on a terminal, one line (rewritten in place, on stderr) shows
its stage and the chunks its furthest device has done, as that device's heartbeats tell
the coordinator (``render_bar``); off a terminal nothing but the outcome is printed.

Exit status: 0 done; 1 the task failed or was refused; 64 usage; 66 a file is missing;
69 the coordinator cannot be reached or trusted; 75 not verified within ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .exits import (
    EX_FAILURE,
    EX_NOINPUT,
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    UsageParser,
)
from .proofs import split_output
from .taskclient import ClientError, SettingsError, load_settings

if TYPE_CHECKING:
    from .runtime.coordinatorapi import CoordinatorApi
from .wasmabi import DEFAULT_FUEL, DEFAULT_MEMORY_MB, MAX_MEMORY_MB

#: How the stages of a task show on the progress bar.
STAGES = ("submitted", "running", "proved", "verified")
POLL_S = 0.5
#: Cells of the progress bar: the first says a device took the task, the last that its
#: result is verified, the ones between fill as chunks are done.
BAR_CELLS = 20
#: Erase to the end of the line: a shorter line leaves nothing of the last one behind.
_CLEAR_EOL = "\x1b[K"
#: Assignment states whose chunks done count (a live or a proved one).
_WORKING = ("offered", "accepted", "proved")


def add_parser(sub: Any) -> None:
    """Add ``task`` to the ``aeamc`` subcommands ``sub``."""
    task = sub.add_parser(
        "task",
        help="submit work to a coordinator and get its verified result",
        description="Submit work to a coordinator and get its verified result. Connection: "
        "AEAMC_URL, AEAMC_TOKEN and AEAMC_CA_FINGERPRINT (or AEAMC_CA_FILE), or the same "
        "keys in lower case in the settings file (docs/workloads.md).",
    )
    task.add_argument("--url", help="the coordinator, https://host:port (default: AEAMC_URL)")
    task.add_argument(
        "--config",
        help="client settings file (default: AEAMC_CLIENT_CONFIG or ~/.config/aeamc/client.toml)",
    )
    task.set_defaults(func=run)
    actions = task.add_subparsers(dest="action", required=True, parser_class=UsageParser)

    submit = actions.add_parser("submit", help="upload what is missing and submit a task")
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--wasm", metavar="FILE", help="a WebAssembly kernel (docs/workloads.md)")
    what.add_argument("--kind", help="a built-in kind instead (sha256-chain, classify-int8)")
    submit.add_argument("--input", metavar="FILE", help="the kernel's input (default: empty)")
    submit.add_argument("--params", help="the built-in kind's parameters, as JSON")
    submit.add_argument("--chunks", type=int, required=True, help="chunks to split the task into")
    submit.add_argument(
        "--fuel",
        type=int,
        default=DEFAULT_FUEL,
        help=f"fuel per chunk, about one per instruction (default {DEFAULT_FUEL})",
    )
    submit.add_argument(
        "--memory-mb",
        type=int,
        default=DEFAULT_MEMORY_MB,
        help=f"memory per chunk in MiB, 1-{MAX_MEMORY_MB} (default {DEFAULT_MEMORY_MB})",
    )
    submit.add_argument("--replicas", type=int, help="devices that each run it (default 1)")
    submit.add_argument(
        "--require-tag",
        dest="require_tags",
        action="append",
        default=[],
        metavar="TAG",
        help="run only on devices carrying this tag (repeatable; all must be present)",
    )
    submit.add_argument(
        "--min-cpus", type=int, help="run only on devices with at least this many CPUs"
    )
    submit.add_argument(
        "--min-mem-mb", type=int, help="run only on devices with at least this much memory (MiB)"
    )
    submit.add_argument("--id", dest="ref", help="your own name for the task (unique for you)")
    _add_waiting(submit)
    submit.set_defaults(task_func=_submit)

    status = actions.add_parser("status", help="a task's state, devices and verification")
    status.add_argument("task_id")
    status.add_argument("--json", action="store_true", help="the coordinator's full answer")
    status.set_defaults(task_func=_status)

    result = actions.add_parser("result", help="write a task's result")
    result.add_argument("task_id")
    _add_waiting(result, wait_flag=False)
    result.set_defaults(task_func=_result, wait=True)

    listing = actions.add_parser("list", help="your tasks, newest first")
    listing.add_argument("--state", help="only tasks in this state (queued, running, …)")
    listing.add_argument("--verified", action="store_true", help="only verified results")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1-1000)")
    listing.add_argument("--json", action="store_true", help="the coordinator's full answer")
    listing.set_defaults(task_func=_list)


def _add_waiting(parser: argparse.ArgumentParser, *, wait_flag: bool = True) -> None:
    if wait_flag:
        parser.add_argument("--wait", action="store_true", help="follow the task to its end")
    parser.add_argument(
        "--verified",
        action="store_true",
        help="wait for a verified result (a spot-check or replicas agreeing), not just any",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the result there (the chunks' outputs)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait at most (default 600)"
    )


def run(args: argparse.Namespace) -> int:
    """Run one ``aeamc task`` action; its exit status."""
    from .runtime.coordinatorapi import CoordinatorApi  # I/O: only when a command runs

    try:
        settings = load_settings({"url": args.url}, config=args.config)
        api = CoordinatorApi(settings)
        return int(args.task_func(api, args))
    except SettingsError as exc:
        print(f"aeamc: {exc}", file=sys.stderr)
        return EX_USAGE
    except ClientError as exc:
        print(f"aeamc: {exc}", file=sys.stderr)
        if exc.status == 0:
            return EX_UNAVAILABLE
        return EX_USAGE if exc.status in (400, 413, 415) else EX_FAILURE
    except FileNotFoundError as exc:
        print(f"aeamc: {exc.filename}: no such file", file=sys.stderr)
        return EX_NOINPUT


# -- submit ------------------------------------------------------------------------------------


def _upload(api: CoordinatorApi, kind: str, data: bytes) -> str:
    """The digest of ``data``, uploaded unless the coordinator already has it for us."""
    digest, sent = api.upload(kind, data)
    shown = f"uploaded ({len(data)} bytes)" if sent else "already uploaded"
    print(f"{kind} {digest[:16]}… {shown}", file=sys.stderr)
    return digest


def _submit(api: CoordinatorApi, args: argparse.Namespace) -> int:
    if args.chunks < 1:
        raise ClientError("--chunks must be at least 1", status=400)
    if args.wasm:
        if args.params:
            raise ClientError("--params goes with --kind; a kernel takes --input", status=400)
        module = _upload(api, "module", Path(args.wasm).read_bytes())
        data = Path(args.input).read_bytes() if args.input else b""
        params: Any = {
            "module": module,
            "input": _upload(api, "input", data),
            "fuel": args.fuel,
            "memory_mb": args.memory_mb,
        }
        kind = "wasm"
    else:
        if args.input:
            raise ClientError("--input goes with --wasm", status=400)
        try:
            params = json.loads(args.params or "{}")
        except ValueError as exc:
            raise ClientError(f"--params: not JSON: {exc}", status=400) from None
        kind = args.kind
    task: dict[str, Any] = {"kind": kind, "params": params, "chunks": args.chunks}
    if args.replicas:
        task["replicas"] = args.replicas
    requires: dict[str, Any] = {}
    if args.require_tags:
        requires["tags"] = sorted(set(args.require_tags))
    if args.min_cpus is not None:
        requires["min_cpus"] = args.min_cpus
    if args.min_mem_mb is not None:
        requires["min_mem_mb"] = args.min_mem_mb
    if requires:
        task["requires"] = requires
    if args.ref:
        task["task_id"] = args.ref
    task_id = api.checked("POST", "/v1/tasks", task)["task_id"]
    print(task_id)
    if not (args.wait or args.verified or args.output):
        return EX_OK
    return _follow(api, task_id, args)


# -- following a task --------------------------------------------------------------------------


def _stage(view: dict[str, Any]) -> int:
    if view.get("verification", {}).get("state") == "verified":
        return 3
    if view.get("proofs"):
        return 2
    if any(a.get("state") in ("accepted", "proved") for a in view.get("assignments", [])):
        return 1
    return 0


def chunks_done(view: dict[str, Any]) -> int | None:
    """How many chunks of the task in ``view`` (``GET /v1/tasks/{id}``) are done: its
    furthest live or proved assignment's ``chunks_done``; all of them once a proof is in,
    none while no device holds it; None when the devices that hold it have not said (an
    older agent, or no heartbeat yet)."""
    stage = _stage(view)
    if stage >= 2:
        return int(view["chunks"])
    known: list[int] = [
        a["chunks_done"]
        for a in view.get("assignments", [])
        if a.get("state") in _WORKING and isinstance(a.get("chunks_done"), int)
    ]
    if known:
        return min(max(known), int(view["chunks"]))
    return 0 if stage == 0 else None


def render_bar(view: dict[str, Any], elapsed_s: float) -> str:
    """The progress line for ``view``, starting with ``\r`` so each one replaces the last:
    the bar, the stage, chunks done of all, the devices at work and the time taken.

    The bar never goes back as a task moves on: empty while queued, one cell once a device
    took it, then a cell per 1/18 of the chunks done, all but the last once proved, and
    full only when the result is verified."""
    stage = _stage(view)
    chunks = int(view["chunks"])
    done = chunks_done(view)
    if stage == 3:
        cells = BAR_CELLS
    elif stage == 2:
        cells = BAR_CELLS - 1
    elif stage == 1:
        cells = 1 + (BAR_CELLS - 2) * (done or 0) // chunks
    else:
        cells = 0
    bar = "#" * cells + "." * (BAR_CELLS - cells)
    count = f"{'?' if done is None else done:>{len(str(chunks))}}/{chunks} chunks"
    devices = {
        a["device_id"][:8] for a in view.get("assignments", []) if a.get("state") in _WORKING
    }
    on = f" on {', '.join(sorted(devices))}" if devices and stage < 3 else ""
    return f"\r[{bar}] {STAGES[stage]:<9} {count}{on}  {elapsed_s:5.1f} s{_CLEAR_EOL}"


def _bar(view: dict[str, Any], started: float, out: TextIO) -> None:
    out.write(render_bar(view, time.monotonic() - started))
    out.flush()


def _follow(api: CoordinatorApi, task_id: str, args: argparse.Namespace) -> int:
    """Follow ``task_id`` until it ends (or is verified); write its result if asked."""
    need_verified = bool(args.verified)
    started = time.monotonic()
    deadline = started + args.timeout
    shown = sys.stderr.isatty()
    while True:
        query = "?verified=true" if need_verified else ""
        view = api.checked("GET", f"/v1/tasks/{task_id}{query}")
        if shown:
            _bar(view, started, sys.stderr)
        failed = view["state"] == "failed"
        verified = view.get("verification", {}).get("state") == "verified"
        done = view["state"] in ("completed", "disputed") and view.get("output") is not None
        if failed or verified or (done and not need_verified):
            break
        if time.monotonic() >= deadline:
            if shown:
                sys.stderr.write("\n")
            print(
                f"aeamc: {task_id} is {view['state']}, "
                f"{view.get('verification', {}).get('state', 'unverified')} after "
                f"{args.timeout:.0f} s",
                file=sys.stderr,
            )
            return EX_TEMPFAIL
        time.sleep(POLL_S)
    if shown:
        sys.stderr.write("\n")
    if failed:
        print(f"aeamc: {task_id} failed: {view.get('detail') or 'see its status'}", file=sys.stderr)
        return EX_FAILURE
    print(
        f"{task_id}: {view['state']}, {view.get('verification', {}).get('state')} "
        f"({time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )
    if args.output:
        _write_result(view, Path(args.output))
    return EX_OK


def _write_result(view: dict[str, Any], path: Path) -> None:
    pieces = split_output(bytes.fromhex(view["output"]), view["chunks"])
    data = b"".join(pieces)
    path.write_bytes(data)
    print(f"wrote {len(data)} bytes ({len(pieces)} chunks) to {path}", file=sys.stderr)


# -- reading back ------------------------------------------------------------------------------


def _status(api: CoordinatorApi, args: argparse.Namespace) -> int:
    view = api.checked("GET", f"/v1/tasks/{args.task_id}")
    if args.json:
        json.dump(view, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EX_OK
    verification = view.get("verification", {})
    print(f"task:         {view['task_id']} ({view['kind']}, {view['chunks']} chunks)")
    print(f"state:        {view['state']}")
    print(
        f"verification: {verification.get('state')}"
        + (f" by {verification['by']}" if verification.get("by") else "")
    )
    requires = view.get("requires") or {}
    if requires:
        wanted = [f"tag {t}" for t in requires.get("tags", ())]
        if "min_cpus" in requires:
            wanted.append(f"≥ {requires['min_cpus']} CPUs")
        if "min_mem_mb" in requires:
            wanted.append(f"≥ {requires['min_mem_mb']} MiB")
        print(f"requires:     {', '.join(wanted)}")
    if view.get("unplaced"):
        print(f"waiting:      {view['unplaced']}")
    for a in view.get("assignments", []):
        reason = f" ({a['reason']})" if a.get("reason") else ""
        done = a.get("chunks_done")
        live = a["state"] in ("offered", "accepted") and isinstance(done, int)
        at = f", {done}/{view['chunks']} chunks done" if live else ""
        print(f"device:       {a['device_id']} {a['state']}{reason}{at}")
    for p in view.get("proofs", []):
        print(
            f"proof:        {p['device_id']} {p['credit']}, spot-check {p.get('spot_check')}, "
            f"block {p.get('block_height')}"
        )
    return EX_OK


def _result(api: CoordinatorApi, args: argparse.Namespace) -> int:
    if not args.output:
        raise ClientError("result: -o FILE says where to write it", status=400)
    return _follow(api, args.task_id, args)


def _list(api: CoordinatorApi, args: argparse.Namespace) -> int:
    query = [f"limit={args.limit}"]
    if args.state:
        query.append(f"state={args.state}")
    if args.verified:
        query.append("verified=true")
    tasks = api.checked("GET", "/v1/tasks?" + "&".join(query))["tasks"]
    if args.json:
        json.dump(tasks, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EX_OK
    for t in tasks:
        verification = t.get("verification", {}).get("state", "")
        print(f"{t['task_id']:40} {t['kind']:14} {t['chunks']:>6} {t['state']:10} {verification}")
    return EX_OK
