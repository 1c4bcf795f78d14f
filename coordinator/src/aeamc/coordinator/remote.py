"""The ``aeamc-coordinator`` commands that operate a running coordinator through its API:
devices, tasks, blocks, flags, tokens and receipt bundles. Each prints JSON (or a table)
and returns an exit status; a refusal by the coordinator is a ``CliError``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aeamc.shared.exits import EX_TEMPFAIL

from .console import EX_OK, EX_USAGE, Api, CliError
from .console import load as _load
from .console import print_json as _print


def cmd_receipts(args: argparse.Namespace) -> int:
    api = Api(_load(args), args.url)
    _print(api.call("GET", f"/v1/receipts/{args.task_id}/{args.device_id}/proof"))
    return EX_OK


def cmd_devices(args: argparse.Namespace) -> int:
    api = Api(_load(args), args.url)
    if args.action == "list":
        return _table(
            api.call("GET", "/v1/devices")["devices"],
            args.json,
            f"{'device_id':32}  {'state':11}  {'eps':>6}  {'rep':>5}  kinds",
            _device_line,
        )
    if not args.device_id:
        raise CliError("a device id is required", EX_USAGE)
    if args.action == "show":
        _print(api.call("GET", f"/v1/devices/{args.device_id}"))
    elif args.action == "export":
        data = api.call("GET", f"/v1/devices/{args.device_id}/export")
        if args.output in (None, "-"):
            _print(data)
        else:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
            print(f"wrote {args.output}", file=sys.stderr)
    elif args.action == "tag":
        if not args.add and not args.remove:
            raise CliError("tag: give --add TAG or --remove TAG", EX_USAGE)
        change = {"add": args.add, "remove": args.remove}
        d = api.call("POST", f"/v1/devices/{args.device_id}/tags", change)
        print(
            f"{d['device_id']}  operator tags: {','.join(d['tags']['operator']) or '-'}  "
            f"own tags: {','.join(d['tags']['device']) or '-'}"
        )
    elif args.action == "forget":
        if not args.yes and not _confirm(
            f"Erase device {args.device_id}? Its telemetry history, addresses, capabilities, "
            "public key and record are deleted for good; its receipts in microblocks stay."
        ):
            raise CliError("not confirmed; nothing was erased")
        _print(api.call("DELETE", f"/v1/devices/{args.device_id}"))
    else:
        body = {"reason": args.reason} if args.reason else None
        _print(api.call("POST", f"/v1/devices/{args.device_id}/{args.action}", body))
    return EX_OK


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise CliError("refusing to erase without confirmation: pass --yes", EX_USAGE)
    answer = input(f"{question}\nType 'yes' to continue: ")
    return answer.strip().lower() == "yes"


def cmd_tasks(args: argparse.Namespace) -> int:
    api = Api(_load(args), args.url, role="client" if args.action == "submit" else "operator")
    if args.action == "submit":
        try:
            params = json.loads(args.params)
        except ValueError as exc:
            raise CliError(f"--params is not JSON: {exc}", EX_USAGE) from None
        body: dict[str, Any] = {"kind": args.kind, "params": params, "chunks": args.chunks}
        if args.replicas:
            body["replicas"] = args.replicas
        _print(api.call("POST", "/v1/tasks", body))
    elif args.action == "show":
        if not args.task_id:
            raise CliError("a task id is required", EX_USAGE)
        return _show_task(api, args.task_id, verified=args.verified, wait_s=args.wait)
    else:
        query = "?verified=true" if args.verified else ""
        _print(api.call("GET", f"/v1/tasks{query}")["tasks"])
    return EX_OK


def _show_task(api: Api, task_id: str, *, verified: bool, wait_s: float) -> int:
    """Print a task; with ``verified``, its output only once verified. With ``wait_s``, wait
    up to that long for the result to be verified (or the task to fail). Exits 75
    (EX_TEMPFAIL) when ``verified`` was asked and the result is not verified (yet)."""
    deadline = time.monotonic() + wait_s
    flag = "true" if verified else "false"
    while True:
        left = max(0, min(api.max_wait_s, int(deadline - time.monotonic())))
        view = api.call(
            "GET", f"/v1/tasks/{task_id}?verified={flag}&wait_s={left}", timeout=left + 30
        )
        done = view["verification"]["state"] == "verified" or view["state"] == "failed"
        if done or time.monotonic() >= deadline:
            break
        if not left:  # the coordinator holds no answer: poll
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    _print(view)
    if verified and view["verification"]["state"] != "verified":
        return EX_TEMPFAIL
    return EX_OK


def cmd_blocks(args: argparse.Namespace) -> int:
    api = Api(_load(args), args.url)
    if args.action == "list":
        _print(api.call("GET", "/v1/microblocks")["microblocks"])
        return EX_OK
    if args.height is None:
        raise CliError("a block height is required", EX_USAGE)
    if args.action == "show":
        _print(api.call("GET", f"/v1/microblocks/{args.height}"))
        return EX_OK
    raw = api.call("GET", f"/v1/microblocks/{args.height}/raw", raw=True)
    if args.output in (None, "-"):
        sys.stdout.buffer.write(raw)
    else:
        Path(args.output).write_bytes(raw)
    return EX_OK


def cmd_flags(args: argparse.Namespace) -> int:
    api = Api(_load(args), args.url)
    if args.action == "set":
        if not args.name or args.percent is None:
            raise CliError("usage: flags set NAME --percent P [--by WHO]", EX_USAGE)
        body: dict[str, Any] = {"percent": args.percent}
        if args.by:
            body["by"] = args.by
        _print(api.call("PUT", f"/v1/flags/{urllib.parse.quote(args.name, safe='')}", body))
        return EX_OK
    if args.action == "history":
        query = f"?name={urllib.parse.quote(args.name)}" if args.name else ""
        return _table(
            api.call("GET", f"/v1/flags/history{query}")["history"],
            args.json,
            f"{'at (UTC)':20}  {'flag':24}  {'from':>5}  {'to':>4}  by",
            _flag_change_line,
        )
    return _table(
        api.call("GET", "/v1/flags")["flags"],
        args.json,
        f"{'flag':24}  {'percent':>7}  {'updated (UTC)':20}  by",
        lambda f: (
            f"{f['name']:24}  {f['percent']:>6}%  {_utc(f['updated_at']):20}  {f['updated_by']}"
        ),
    )


def _table(
    rows: list[dict[str, Any]], as_json: bool, header: str, line: Callable[[dict[str, Any]], str]
) -> int:
    """Print ``rows`` as JSON (``--json``) or as a table: ``header``, then one ``line`` each."""
    if as_json:
        _print(rows)
        return EX_OK
    print(header)
    for row in rows:
        print(line(row))
    return EX_OK


def _device_line(d: dict[str, Any]) -> str:
    eps = "-" if d["eps"] is None else f"{d['eps']:.3f}"
    kinds = ",".join(d["capabilities"]["kinds"])
    tags = sorted(set(d["tags"]["device"]) | set(d["tags"]["operator"]))
    line = f"{d['device_id']:32}  {d['state']:11}  {eps:>6}  {d['reputation']:5.2f}  {kinds}"
    return line + (f"  tags {','.join(tags)}" if tags else "")


def _flag_change_line(r: dict[str, Any]) -> str:
    before = "-" if r["from_percent"] is None else f"{r['from_percent']}%"
    return f"{_utc(r['at']):20}  {r['name']:24}  {before:>5}  {r['to_percent']:>3}%  {r['by']}"


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def cmd_token(args: argparse.Namespace) -> int:
    api = Api(_load(args), args.url)
    body: dict[str, Any] = {"role": args.role, "label": args.label or ""}
    if args.ttl_s:
        body["ttl_s"] = args.ttl_s
    if args.uses:
        body["uses"] = args.uses
    _print(api.call("POST", "/v1/tokens", body))
    return EX_OK
