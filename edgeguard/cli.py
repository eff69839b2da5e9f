"""The `edgeguard` command line: argument parsing and exit codes, nothing else."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeguard import __version__, env
from edgeguard.config import Config, load_config
from edgeguard.daemon.logs import OneLine
from edgeguard.errors import ConfigError, EdgeguardError, ExitCode, ModelChecksumError, ModelMissingError, UsageError

if TYPE_CHECKING:  # imported where used: the CLI starts without loading the daemon
    from edgeguard.daemon.folders import Folders

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 by itself; keep one exit path
        raise UsageError(f"{self.prog}: {message}")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, help=f"YAML config (default: ${env.CONFIG} or built-in defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one dotted key with a YAML value, e.g. protect.style=fill",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgeguard", description="Hide people (or any COCO class) in videos and images.")
    p.add_argument("--version", action="version", version=f"edgeguard {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pr = sub.add_parser("protect", help="protect videos/images once")
    pr.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    out = pr.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="output file (one input only), or FOLDER/ like --out-dir")
    out.add_argument("--out-dir", type=Path, help="folder for outputs (default: beside each input, NAME.protected.EXT)")
    pr.add_argument("--json", action="store_true", help="print one JSON summary per file on stdout")
    _config_args(pr)

    pv = sub.add_parser("preview", help="contact sheet: a few frames beside their protected result, to tune a config")
    pv.add_argument("input", type=Path, metavar="INPUT")
    pv.add_argument("-o", "--output", help="sheet file, .png or .jpg (default: beside INPUT, NAME.preview.png)")
    pv.add_argument("--frames", type=int, default=4, metavar="N", help="video frames shown, spread evenly (default 4)")
    _config_args(pv)

    cc = sub.add_parser("check-config", help="validate a config file")
    _config_args(cc)

    dr = sub.add_parser("doctor", help="check that this machine can run the configured setup")
    _config_args(dr)

    rn = sub.add_parser("run", help="run the watch-folder service (foreground; systemd Type=notify)")
    _config_args(rn)

    st = sub.add_parser("status", help="what the daemon's ledger says (safe while it runs)")
    st.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _config_args(st)

    au = sub.add_parser("audit", help="what was done to make an output, and with what (from the ledger)")
    au.add_argument("file", metavar="OUTPUT_OR_INPUT", help="a file (found by content), a file name, or a sha256")
    au.add_argument("--json", action="store_true", help="the record as JSON on stdout")
    au.add_argument("--all", action="store_true", help="every matching record, newest first (default: the newest)")
    _config_args(au)

    us = sub.add_parser("unseal", help="decrypt a sealed original with its reviewer's key (off the gateway)")
    us.add_argument("sealed", type=Path, metavar="FILE.age")
    us.add_argument(
        "-i", "--identity", type=Path, required=True, help="age identity file (edgeguard keygen, age-keygen)"
    )
    us.add_argument("-o", "--output", help="where to write it, or - for stdout (default: its original name, here)")

    kg = sub.add_parser("keygen", help="make an age key pair for sealed originals (run it off the gateway)")
    kg.add_argument("-o", "--output", type=Path, help="identity file to write (default: stdout)")

    mo = sub.add_parser("models", help="list or provision models")
    msub = mo.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    ml = msub.add_parser("list", help="known models and whether their files are here")
    _config_args(ml)
    mf = msub.add_parser("fetch", help="download (or copy --from DIR) and verify model files")
    mf.add_argument("names", nargs="*", metavar="NAME", help="models to fetch (default: the configured one)")
    mf.add_argument("--from", dest="source", type=Path, help=f"offline source folder (default: ${env.MODEL_SOURCE})")
    _config_args(mf)
    return p


def _load(args: argparse.Namespace) -> Config:
    return load_config(_config_path(args), args.overrides)


def _config_path(args: argparse.Namespace) -> Path | None:
    path: Path | None = args.config
    return path if path is not None else env.path(env.CONFIG)


def _setup_logging(verbose: bool, level: str = "info") -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else getattr(logging, level.upper()),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(OneLine())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(args.verbose)
        handler = _COMMANDS[args.command]
        return int(handler(args))
    except ConfigError as exc:
        for line in exc.problems:
            print(f"edgeguard: {line}", file=sys.stderr)
        return int(exc.exit_code)
    except EdgeguardError as exc:
        print(f"edgeguard: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("edgeguard: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback for whoever debugs it
        log.debug("unexpected error", exc_info=True)
        print(
            f"edgeguard: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)",
            file=sys.stderr,
        )
        return ExitCode.INTERNAL


# ------------------------------------------------------------------ commands


def _cmd_check_config(args: argparse.Namespace) -> int:
    from edgeguard.detectors import factory

    cfg = _load(args)
    for note in factory.check(cfg):
        print(f"note: {note}")
    print(f"{_config_path(args) or '<defaults>'}: ok")
    return ExitCode.OK


def _outputs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    from edgeguard.media import IMAGE_EXTENSIONS, media_kind
    from edgeguard.publish import output_name

    out_dir: Path | None = args.out_dir
    output = Path(args.output) if args.output is not None else None
    if output is not None and (output.is_dir() or args.output.endswith("/")):
        out_dir, output = output, None  # `-o FOLDER/` means the outputs go in that folder
    if output is not None and len(args.inputs) != 1:
        raise UsageError("edgeguard protect: -o/--output takes exactly one INPUT (use --out-dir for several)")
    if output is not None and not output.parent.is_dir():
        raise UsageError(
            f"edgeguard protect: -o {output}: the folder {output.parent} does not exist "
            "(create it, or give --out-dir, which creates its folder)"
        )
    pairs = []
    taken: dict[Path, Path] = {}
    for src in args.inputs:
        if src.is_dir():
            raise UsageError(f"edgeguard protect: {src} is a directory; give the files in it (e.g. {src}/*)")
        if output is not None:
            dst = output
        elif out_dir is not None:
            dst = out_dir / output_name(src.name)
        else:
            d = src.parent / output_name(src.name)
            dst = d.with_name(f"{d.stem}.protected{d.suffix}")
        if dst.resolve() == src.resolve():
            raise UsageError(f"edgeguard protect: output {dst} would overwrite its input")
        kind = media_kind(src)
        if kind == "video" and dst.suffix.lower() != ".mp4":
            raise UsageError(f"edgeguard protect: {dst}: video outputs are MP4; name it .mp4")
        if kind == "image" and media_kind(dst) != "image":
            raise UsageError(f"edgeguard protect: {dst}: images are written as {', '.join(sorted(IMAGE_EXTENSIONS))}")
        if dst.resolve() in taken:
            raise UsageError(f"edgeguard protect: {taken[dst.resolve()]} and {src} would both write {dst}")
        taken[dst.resolve()] = src
        pairs.append((src, dst))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    return pairs


def _cmd_protect(args: argparse.Namespace) -> int:
    from edgeguard.engine import Engine
    from edgeguard.progress import ProgressBar
    from edgeguard.publish import replace_into, staging_path

    cfg = _load(args)
    _setup_logging(args.verbose, cfg.logging.level)
    pairs = _outputs(args)
    engine = Engine(cfg)
    failed = 0
    for src, dst in pairs:
        staged = staging_path(dst.parent, dst.name)
        try:
            with ProgressBar(src.name) as bar:
                result = engine.protect_file(src, staged, progress=bar.update)
            replace_into(staged, dst)
        except EdgeguardError as exc:
            failed += 1
            print(f"edgeguard: failed: {exc}", file=sys.stderr)
            continue
        except OSError as exc:  # replacing the output (the engine has removed its own partial file)
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)
            failed += 1
            print(f"edgeguard: failed: {dst}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            continue
        summary = {**result.as_dict(), "output": str(dst)}
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            log.info(
                "%s -> %s: %d frames, %d detections, %.1f fps", src, dst, result.frames, result.detections, result.fps
            )
    return ExitCode.FAILED if failed else ExitCode.OK


def _cmd_preview(args: argparse.Namespace) -> int:
    from edgeguard.engine import Engine
    from edgeguard.preview import build_preview, plan
    from edgeguard.progress import ProgressBar

    cfg = _load(args)
    _setup_logging(args.verbose, cfg.logging.level)
    dst = plan(args.input, args.output, args.frames, cfg.paths.folders())  # before the model loads
    with ProgressBar(args.input.name) as bar:
        preview = build_preview(Engine(cfg), args.input, dst, frames=args.frames, progress=bar.update)
    print(preview.summary())
    return ExitCode.OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    from edgeguard.doctor import run_doctor

    return run_doctor(_load(args))


def _cmd_models(args: argparse.Namespace) -> int:
    from edgeguard import models
    from edgeguard.detectors.factory import manifest_dirs

    cfg = _load(args)
    dirs = manifest_dirs(cfg)
    if args.models_command == "list":
        for name, m in sorted(models.load_manifests(dirs).items()):
            try:
                models.resolve(m, cfg.models_dir())
                state = "ready"
            except ModelMissingError:
                state = f"not provisioned: run `edgeguard models fetch {name}`"
            except ModelChecksumError:
                state = f"damaged (checksum mismatch): run `edgeguard models fetch {name}`"
            except EdgeguardError as exc:
                state = f"not usable: {exc}"
            mark = "*" if name == cfg.detector.model else " "
            print(f"{mark} {name:32} {m.backend:9} {state}")
            if m.description:
                print(f"    {m.description}")
        return ExitCode.OK
    source = args.source or env.path(env.MODEL_SOURCE)
    for name in args.names or [cfg.detector.model]:
        paths = models.fetch(models.find_manifest(name, dirs), cfg.models_dir(), source=source)
        for path in paths:
            print(f"{name}: {path}")
    return ExitCode.OK


def _cmd_run(args: argparse.Namespace) -> int:
    from edgeguard.daemon import logs
    from edgeguard.daemon.service import Service

    cfg = _load(args)  # fail fast on a bad config, before any model loads
    logs.setup(cfg.logging.level, verbose=args.verbose)
    # A watchdog SIGABRT then leaves every thread's stack in the journal.
    faulthandler.enable()
    return Service(_config_path(args), args.overrides).run()


def _cmd_status(args: argparse.Namespace) -> int:
    from edgeguard.daemon import status

    report = status.collect(_folders(_load(args)))
    print(json.dumps(report) if args.json else status.render(report))
    return ExitCode.OK


def _folders(cfg: Config) -> Folders:
    """The daemon's folders as a reader sees them (nothing is created)."""
    from edgeguard.daemon.folders import Folders

    return Folders(**{k: v.absolute() for k, v in cfg.paths.folders().items()})


def _cmd_audit(args: argparse.Namespace) -> int:
    from edgeguard.daemon import audit
    from edgeguard.daemon.logs import escape

    ledger = _folders(_load(args)).ledger
    records = audit.find(ledger, args.file)
    if not records:
        raise EdgeguardError(f"no audit record for {escape(args.file)} in {ledger}")
    shown = records if args.all else records[:1]
    for i, record in enumerate(shown):
        if args.json:
            print(json.dumps(record, sort_keys=False))
        else:
            print(("\n" if i else "") + audit.render(record))
    if len(records) > len(shown) and not args.json:
        print(f"({len(records) - len(shown)} older record(s) match: --all shows them)")
    return ExitCode.OK


def _cmd_unseal(args: argparse.Namespace) -> int:
    # A stop or a hang-up ends it as Ctrl-C does: unwinding, so the partial plaintext is removed.
    before = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _unseal(args)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _unseal(args: argparse.Namespace) -> int:
    from edgeguard import seal

    identities = seal.read_identities(args.identity)
    if args.output == "-":
        record = seal.read_record(args.sealed)
        try:
            with args.sealed.open("rb") as src:
                checked = seal.unseal(src, sys.stdout.buffer, identities, record)
        except OSError as exc:
            raise seal.SealError(f"cannot read {args.sealed}: {exc.strerror or exc}") from exc
        sys.stdout.buffer.flush()
        where = "stdout"
    else:
        out = Path(args.output) if args.output else seal.default_output(args.sealed)
        checked = seal.unseal_file(args.sealed, identities, out)
        where = str(out)
    check = "matches the hash taken when it was sealed" if checked else "no record beside it to check against"
    print(f"edgeguard: unsealed {args.sealed} to {where}; {check}", file=sys.stderr)
    return ExitCode.OK


def _cmd_keygen(args: argparse.Namespace) -> int:
    from edgeguard import seal

    pair = seal.keygen()
    if args.output is None:
        print(pair.file_text(), end="")
    else:
        seal.write_identity(pair, args.output)
        print(pair.recipient)
    where = f"{args.output} (mode 0600)" if args.output else "stdout"
    print(
        f"edgeguard: identity written to {where}: keep it off the gateway.\n"
        f"edgeguard: public key (for seal.recipients): {pair.recipient}\n"
        f"edgeguard: fingerprint: {seal.fingerprint(pair.recipient)}",
        file=sys.stderr,
    )
    return ExitCode.OK


_COMMANDS = {
    "run": _cmd_run,
    "status": _cmd_status,
    "audit": _cmd_audit,
    "protect": _cmd_protect,
    "preview": _cmd_preview,
    "check-config": _cmd_check_config,
    "doctor": _cmd_doctor,
    "models": _cmd_models,
    "unseal": _cmd_unseal,
    "keygen": _cmd_keygen,
}


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
