"""Release versions and their order (PEP 440 subset), with nothing else imported.

Apart from ``releases.py`` so that the agent's launcher, which compares the version of a
release slot with its own, does not load the protocol's messages and signatures.
"""

from __future__ import annotations

import re
from typing import Any

#: PEP 440 public versions without epochs or local parts (what packaging/set_version.py takes).
VERSION = re.compile(r"(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?(?:\.post(\d+))?(?:\.dev(\d+))?")
VERSION_PATTERN = r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?"


def is_version(value: str) -> bool:
    return isinstance(value, str) and VERSION.fullmatch(value) is not None


def version_key(version: str) -> tuple[Any, ...]:
    """Sort key in PEP 440 order: ``1.0.dev1 < 1.0rc1 < 1.0 < 1.0.post1 < 1.0.1``."""
    m = VERSION.fullmatch(version)
    if m is None:
        raise ValueError(f"{version!r} is not a version like 1.2.3 or 1.2.3rc1")
    release = tuple(int(p) for p in m.group(1).split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    pre_kind, pre_n, post, dev = m.group(2), m.group(3), m.group(4), m.group(5)
    if pre_kind is not None:
        pre: tuple[int, int] = ({"a": 0, "b": 1, "rc": 2}[pre_kind], int(pre_n))
    elif dev is not None and post is None:
        pre = (-1, 0)  # 1.0.dev1 sorts before 1.0a1
    else:
        pre = (3, 0)
    post_key = int(post) if post is not None else -1
    dev_key = int(dev) if dev is not None else 2**63
    return (release, pre, post_key, dev_key)


def newer(a: str, b: str) -> bool:
    """Whether version ``a`` is newer than ``b``."""
    return version_key(a) > version_key(b)
