"""``aeamc-coordinator release ...``: keys, publishing and rollouts of agent releases.

Signing happens in the command's own process, with whatever keys it is given (``--keys
DIR`` on removable media, configured files, or an HSM): the running coordinator never
holds the root or targets key. The rollout itself is then started through the API.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import console
from ..config import CoordinatorConfig
from .repository import Repository, RepositoryError, sign_staged
from .signing import RoleKeyError, keygen


def _repo(config: CoordinatorConfig) -> Repository:
    from ..app import update_repository

    return update_repository(config)


def _keys(args: argparse.Namespace) -> Path | None:
    return Path(args.keys) if getattr(args, "keys", None) else None


def cmd_release(args: argparse.Namespace) -> int:
    try:
        return int(_ACTIONS[args.release_command](args))
    except (RepositoryError, RoleKeyError) as exc:
        raise console.CliError(str(exc)) from None


def _keygen(args: argparse.Namespace) -> int:
    ids = keygen(Path(args.dir))
    for role, keyid in ids.items():
        print(f"{role:8} key {keyid}  ({Path(args.dir) / (role + '.key')})")
    print("keep this folder offline; the coordinator needs it for `release init` and to publish")
    return console.EX_OK


def _init(args: argparse.Namespace) -> int:
    config = console.load(args)
    ids = _repo(config).init(_keys(args))
    for role, keyid in ids.items():
        print(f"{role:9} {keyid}")
    print(f"update repository created in {config.state_dir / 'updates'}")
    return console.EX_OK


def _publish(args: argparse.Namespace) -> int:
    config = console.load(args)
    repo = _repo(config)
    paths = [Path(p) for p in args.packages]
    if len(paths) == 1 and paths[0].is_dir():
        version = repo.publish_staged(paths[0])
    elif (known := repo.release_version(paths)) is not None and repo.has_release(known):
        # Signed by an earlier publish whose rollout did not start (coordinator down?).
        version = known
        print(f"release {version} is already in the update repository")
    else:
        version = repo.publish(paths, _keys(args))
    print(f"release {version} signed into the update repository")
    body: dict[str, Any] = {"version": version, "percent": args.rollout}
    if args.by:
        body["by"] = args.by
    view = console.Api(config, args.url).call("POST", "/v1/releases", body)
    print(f"rolling out to {view['percent']} % of the fleet (flag {view['flag']})")
    return console.EX_OK


def _stage(args: argparse.Namespace) -> int:
    config = console.load(args)
    md = _repo(config).stage([Path(p) for p in args.packages], Path(args.output))
    print(f"staged targets version {md.signed.version} in {args.output}")
    print("sign it where the targets key is: aeamc-coordinator release sign DIR --keys KEYS")
    return console.EX_OK


def _sign(args: argparse.Namespace) -> int:
    if not args.keys:
        raise console.CliError("release sign needs --keys DIR", console.EX_USAGE)
    md = sign_staged(Path(args.dir), Path(args.keys))
    for path, info in sorted(md.signed.targets.items()):
        print(f"{info.length:>10}  {info.hashes['sha256'][:16]}…  {path}")
    print(f"signed targets version {md.signed.version}; publish it with: release publish DIR")
    return console.EX_OK


def _refresh(args: argparse.Namespace) -> int:
    config = console.load(args)
    done = _repo(config).refresh_online(force=True)
    print(f"re-signed: {', '.join(done)}")
    return console.EX_OK


def _status(args: argparse.Namespace) -> int:
    config = console.load(args)
    api = console.Api(config, args.url)
    if args.version:
        detail = api.call("GET", f"/v1/releases/{args.version}")
        if args.json:
            console.print_json(detail)
            return console.EX_OK
        _print_release(detail)
        for r in detail["reports"]:
            extra = f"  {r['detail']}" if r["detail"] else ""
            print(f"  {r['device_id']}  {r['outcome']:12} running {r['version']}{extra}")
        return console.EX_OK
    status = api.call("GET", "/v1/releases")
    if args.json:
        console.print_json(status)
        return console.EX_OK
    fleet = ", ".join(f"{v}: {n}" for v, n in status["fleet_versions"].items()) or "no devices"
    print(f"fleet: {fleet}")
    for release in status["releases"]:
        _print_release(release)
    expires = status["repository"].get("expires", {})
    if expires:
        print("metadata expires: " + ", ".join(f"{k} {v}" for k, v in expires.items()))
    return console.EX_OK


def _print_release(r: dict[str, Any]) -> None:
    p = r["progress"]
    state = r["state"]
    if r.get("halt_reason"):
        state += f" ({r['halt_reason']})"
    print(
        f"{r['version']:12} {r['percent']:>3} %  {state}: {p['updated']} updated, "
        f"{p['failed']} failed of {p['targeted']} targeted; {p['running']} running it"
    )


def _rollout(args: argparse.Namespace) -> int:
    config = console.load(args)
    body: dict[str, Any] = {"percent": args.percent}
    if args.by:
        body["by"] = args.by
    _print_release(
        console.Api(config, args.url).call("PUT", f"/v1/releases/{args.version}/rollout", body)
    )
    return console.EX_OK


def _halt(args: argparse.Namespace) -> int:
    config = console.load(args)
    body: dict[str, Any] = {}
    if args.reason:
        body["reason"] = args.reason
    if args.by:
        body["by"] = args.by
    _print_release(
        console.Api(config, args.url).call("POST", f"/v1/releases/{args.version}/halt", body)
    )
    return console.EX_OK


_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "keygen": _keygen,
    "init": _init,
    "publish": _publish,
    "stage": _stage,
    "sign": _sign,
    "refresh": _refresh,
    "status": _status,
    "list": _status,
    "rollout": _rollout,
    "halt": _halt,
}


def add_release_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    rl = sub.add_parser("release", help="agent releases: keys, publish, rollouts (docs/updates.md)")
    rs = rl.add_subparsers(dest="release_command", required=True, parser_class=parser_class)
    rl.set_defaults(func=cmd_release)

    def action(name: str, help: str, *, remote: bool = False) -> argparse.ArgumentParser:
        sp = rs.add_parser(name, help=help)
        if remote:
            sp.add_argument("--url", help="coordinator URL (default: from the configuration)")
        return sp

    kg = action("keygen", "create the offline root and targets keys in DIR")
    kg.add_argument("dir")
    ini = action("init", "create the update repository (root signed with the offline root key)")
    ini.add_argument("--keys", help="folder of the offline keys (from release keygen)")
    pb = action("publish", "sign a release into the repository and start its rollout", remote=True)
    pb.add_argument("packages", nargs="+", help="the release's wheels, or a signed staged folder")
    pb.add_argument("--rollout", type=int, required=True, help="percent of the fleet, 0..100")
    pb.add_argument("--keys", help="folder holding targets.key (if not configured)")
    pb.add_argument("--by", help="who publishes (default: the token's label)")
    sg = action("stage", "prepare a release for signing on the offline machine")
    sg.add_argument("packages", nargs="+")
    sg.add_argument("-o", "--output", required=True, help="folder to carry to the offline machine")
    sn = action("sign", "sign a staged release with the offline targets key")
    sn.add_argument("dir")
    sn.add_argument("--keys", help="folder holding targets.key")
    action("refresh", "re-sign snapshot and timestamp now")
    for name in ("status", "list"):
        st = action(name, "fleet versions and rollout progress", remote=True)
        st.add_argument("version", nargs="?")
        st.add_argument("--json", action="store_true")
    ro = action("rollout", "set a rollout's percent (resumes a halted one)", remote=True)
    ro.add_argument("version")
    ro.add_argument("--percent", type=int, required=True)
    ro.add_argument("--by")
    ht = action("halt", "halt a rollout: no further device starts the update", remote=True)
    ht.add_argument("version")
    ht.add_argument("--reason")
    ht.add_argument("--by")
