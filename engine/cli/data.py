"""``medvision keys rotate``, ``backup OUT`` and ``restore IN``: the data directory's keys and copies."""

from __future__ import annotations

import argparse
import os

from engine.cli.common import json_text


def _settings(args: argparse.Namespace):  # noqa: ANN202 - engine.config.Settings
    from engine.config import Settings

    return Settings.from_env(home=args.home, model_pack=args.pack)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """A new database key and rewrapped data key; stop the desktop and the DICOM node first."""
    from engine.store.rotation import rotate

    settings = _settings(args)
    result = rotate(settings.home, use_keyring=settings.use_keyring)
    if args.json:
        print(json_text(result))
        return 0
    print(f"rotated: new key {result['key_id']}, {len(result['databases'])} database(s) rekeyed "
          f"in {result['seconds']:.2f} s; the old key opens nothing any more")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """An encrypted, verified copy of the data directory (it may be in use)."""
    from engine.store.backup import backup
    from engine.store.keys import resolve_key
    from engine.store.rotation import recover
    from engine.store.store import DATABASE_NAME

    settings = _settings(args)
    recover(settings.home, use_keyring=settings.use_keyring)
    key = resolve_key(settings.home, settings.home / DATABASE_NAME, use_keyring=settings.use_keyring)
    result = backup(settings.home, args.out, key)
    if args.json:
        print(json_text(result))
        return 0
    megabytes = result["bytes"] / 1e6
    print(f"backup verified: {len(result['databases'])} database(s), {len(result['files'])} file(s), "
          f"{megabytes:.1f} MB in {result['seconds']:.1f} s ({megabytes / max(result['seconds'], 1e-9):.0f} MB/s); "
          f"restore needs the key {result['key_id']}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a backup into an empty data directory, with the key of the site that made it."""
    from engine.errors import ErrorCode, MedVisionError
    from engine.store import Store
    from engine.store.backup import restore
    from engine.store.keys import ENV_KEY, load_key_file, resolve_keys, write_keys

    settings = _settings(args)
    if args.key_file:
        key = load_key_file(args.key_file)
    elif os.environ.get(ENV_KEY):
        key = resolve_keys(settings.home, use_keyring=False)[0][0]
    else:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, f"give --key-file (the db.key of the site that made the "
                             f"backup) or set {ENV_KEY}")
    result = restore(args.source, settings.home, key)
    if args.key_file:
        write_keys(settings.home, [key], "file")
    store = Store.open(settings.home, use_keyring=settings.use_keyring)  # indexes instances not yet indexed
    try:
        result["instances"] = store.db.query(
            "SELECT count(*) AS n FROM images WHERE sop_instance_uid IS NOT NULL")[0]["n"]
    finally:
        store.close()
    if args.json:
        print(json_text(result))
        return 0
    print(f"restored {result['files']} file(s), {result['bytes'] / 1e6:.1f} MB, {result['instances']} DICOM "
          f"instance(s) into {settings.home.name}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """``keys rotate``, ``backup`` and ``restore``."""
    keys = sub.add_parser("keys", help="the data directory's encryption keys").add_subparsers(dest="keys_command",
                                                                                            required=True)
    rotate = keys.add_parser("rotate", help="new database key, data key rewrapped (stop the desktop and node first)")
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(func=cmd_keys_rotate)
    backup = sub.add_parser("backup", help="encrypted, verified copy of the data directory (while in use)")
    backup.add_argument("out", metavar="OUT", help="an empty or new folder")
    backup.add_argument("--json", action="store_true")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="restore a backup into an empty data directory (--home)")
    restore.add_argument("source", metavar="IN", help="a backup folder")
    restore.add_argument("--key-file", metavar="FILE", help="the db.key of the site that made the backup")
    restore.add_argument("--json", action="store_true")
    restore.set_defaults(func=cmd_restore)
