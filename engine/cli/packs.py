"""``medvision models ...``: build, list, verify, export, import and sign model packs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.errors import ErrorCode, MedVisionError


def cmd_models_build(args: argparse.Namespace) -> int:
    """Build a model pack (needs the ``build`` extra)."""
    from engine.config import Settings

    out = Path(args.out) if args.out else Settings.from_env(args.home, args.pack).model_pack
    try:
        from models.pack import build_pack, components_named, is_fresh
    except ImportError as exc:
        raise MedVisionError(
            ErrorCode.MODEL_LOAD_ERROR,
            f"building model packs needs the build extra (pip install 'medvision[build]'): {exc.name} is missing",
        ) from exc
    try:
        components = components_named([n.strip() for v in args.only for n in v.split(",")]) if args.only else None
    except ValueError as exc:
        raise MedVisionError(ErrorCode.INVALID_ARGUMENT, str(exc)) from exc
    if args.if_stale and is_fresh(out, dev=args.dev, components=components):
        print(f"model pack up to date: {out}")
        return 0
    weights = Path(args.weights_dir) if args.weights_dir else None
    if weights is not None and not weights.is_dir():
        raise MedVisionError(ErrorCode.FILE_NOT_FOUND, f"weights directory {weights.name} does not exist")
    calibration = Path(args.calibration) if args.calibration else None
    print(f"building {'dev' if args.dev else 'site'} model pack into {out} ...")
    manifest = build_pack(out, dev=args.dev, weights_dir=weights, calibration_dir=calibration, threads=args.threads,
                          components=components)
    _print_models(manifest)
    return 0


def _print_models(manifest: dict) -> None:
    print(f"pack {manifest['name']} (builder {manifest['builder_version']}, trained: {str(manifest.get('trained')).lower()})")
    for model in manifest["models"]:
        extra = ""
        quant = model.get("quantization") or {}
        if "parity_max_abs_dp" in quant:
            extra = f"  parity max|dp| {quant['parity_max_abs_dp']:.4f}"
        bench = model.get("benchmark") or {}
        if "median_ms" in bench:
            extra += f"  {bench['median_ms']:.1f} ms"
        default = "*" if model.get("default") else " "
        print(f" {default} {model['id']:<34} {model['task']:<10} {model['precision']:<5} "
              f"{model['size_bytes'] / 1e6:7.1f} MB  trained={str(model['trained']).lower()}{extra}")


def cmd_models_list(args: argparse.Namespace) -> int:
    """List the models of the configured pack."""
    from engine.config import Settings
    from engine.inference.modelpack import ModelPack

    pack = ModelPack.load(Settings.from_env(args.home, args.pack).model_pack)
    _print_models(pack.manifest)
    return 0


def cmd_models_export_pack(args: argparse.Namespace) -> int:
    """Write the configured pack as a tar (manifest, SHA256SUMS, optional ed25519 signature)."""
    from engine.config import Settings
    from engine.inference.packtransfer import export_pack

    result = export_pack(Settings.from_env(args.home, args.pack).model_pack, args.out, signing_key=args.sign)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_models_import_pack(args: argparse.Namespace) -> int:
    """Verify a pack tar (checksums, signature against the site's trusted keys) and install it atomically."""
    from engine.config import Settings
    from engine.inference.packtransfer import import_pack

    dest = args.dest or Settings.from_env(args.home, args.pack).model_pack
    result = import_pack(args.tar, dest, trusted_keys=args.trusted_key or None)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_models_keygen(args: argparse.Namespace) -> int:
    """Create an ed25519 key pair for signing packs (private PEM 0600, base64 public key)."""
    from engine.inference.packtransfer import generate_keypair

    print(json.dumps(generate_keypair(Path(args.private), Path(args.public) if args.public else None), indent=2))
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    """Check every file of the pack against its sha256."""
    from engine.config import Settings
    from engine.inference.modelpack import ModelPack

    pack = ModelPack.load(Settings.from_env(args.home, args.pack).model_pack)
    rows = pack.verify()
    for row in rows:
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['file']}" + (f"  {row['error']}" if row["error"] else ""))
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise MedVisionError(ErrorCode.MODEL_INTEGRITY_ERROR, f"{len(bad)} model file(s) failed verification: "
                             + ", ".join(r["file"] for r in bad))
    print(f"all {len(rows)} model files verified")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """``models build | list | verify | export-pack | import-pack | keygen``."""
    models = sub.add_parser("models", help="model packs").add_subparsers(dest="models_command", required=True)
    build = models.add_parser("build", help="build a model pack (needs the build extra)")
    kind = build.add_mutually_exclusive_group(required=True)
    kind.add_argument("--dev", action="store_true", help="real architectures, no pretrained weights")
    kind.add_argument("--weights-dir", metavar="DIR", help="folder holding the upstream weight files")
    build.add_argument("--out", metavar="DIR", help="pack directory (default: the configured pack)")
    build.add_argument("--calibration", metavar="DIR", help="folder of real chest radiographs for int8 calibration")
    build.add_argument("--threads", type=int, default=2, help="threads for the build-time benchmark")
    build.add_argument("--if-stale", action="store_true", help="do nothing when the pack is current")
    build.add_argument("--only", action="append", metavar="FAMILY[,FAMILY]",
                       help="build only these model families (classifier, segmentation, embedding, sam, llm, "
                            "volume_unet); repeatable")
    build.set_defaults(func=cmd_models_build)
    models.add_parser("list", help="list the pack's models").set_defaults(func=cmd_models_list)
    models.add_parser("verify", help="check every model file's sha256").set_defaults(func=cmd_models_verify)
    export_pack = models.add_parser("export-pack", help="write the pack as a tar for an air-gapped machine")
    export_pack.add_argument("out", metavar="OUT.tar")
    export_pack.add_argument("--sign", metavar="KEY.pem", help="ed25519 private key to sign the pack with")
    export_pack.set_defaults(func=cmd_models_export_pack)
    import_pack = models.add_parser("import-pack", help="verify and install a pack tar (atomic)")
    import_pack.add_argument("tar", metavar="PACK.tar")
    import_pack.add_argument("--dest", metavar="DIR", help="pack directory (default: the configured pack)")
    import_pack.add_argument("--trusted-key", action="append", metavar="KEY",
                             help="trusted public key (base64 or file; default: MEDVISION_TRUSTED_PACK_KEYS or the "
                                  "site file)")
    import_pack.set_defaults(func=cmd_models_import_pack)
    keygen = models.add_parser("keygen", help="create an ed25519 key pair for signing packs")
    keygen.add_argument("private", metavar="PRIVATE.pem")
    keygen.add_argument("--public", metavar="FILE")
    keygen.set_defaults(func=cmd_models_keygen)
