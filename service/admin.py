"""Artifact store administration (numpy only, no service running needed).

    python -m service.admin list     --root artifacts
    python -m service.admin promote  --root artifacts --to VERSION
    python -m service.admin rollback --root artifacts [--to VERSION]

``promote`` and ``rollback`` verify the target artifact and rewrite CURRENT atomically; every running
replica swaps to it within MODEL_POLL_INTERVAL_S. ``rollback`` without ``--to`` goes to the newest
version older than the serving one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from artifact import contract
from artifact.contract import ArtifactError


def _list(root: Path) -> int:
    current = contract.read_current(root)
    versions = contract.list_versions(root)
    if not versions:
        print(f"no versions in {root}")
        return 0
    print(f"{'':2}{'version':<34}{'val recall@20':>14}  created_at")
    for version in versions:
        try:
            m = contract.read_manifest(root / version)
            recall = m.val_recall20()
            shown = f"{recall:.4f}" if recall is not None else "-"
            created = m.created_at
        except ArtifactError as exc:
            shown, created = "unreadable", str(exc)
        mark = "* " if version == current else "  "
        print(f"{mark}{version:<34}{shown:>14}  {created}")
    return 0


def _set(root: Path, version: str) -> int:
    previous = contract.read_current(root)
    contract.set_current(root, version)
    print(f"CURRENT: {previous} -> {version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "promote", "rollback"):
        p = sub.add_parser(name)
        p.add_argument("--root", type=Path, required=True, help="artifact store (ARTIFACT_ROOT)")
        if name != "list":
            p.add_argument("--to", required=name == "promote", help="model version")
    args = parser.parse_args(argv)
    root: Path = args.root
    try:
        if args.command == "list":
            return _list(root)
        if args.command == "promote" or args.to:
            return _set(root, args.to)
        current = contract.read_current(root)
        older = [v for v in contract.list_versions(root) if current is None or v < current]
        if not older:
            print(f"nothing to roll back to: no version older than {current} in {root}", file=sys.stderr)
            return 1
        return _set(root, older[-1])
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
