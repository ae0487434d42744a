"""`alpaca-weights`: fill a weights cache (the fill Job's command), and the tools around it.

    alpaca-weights fill --source URI --dest DIR [--revision R] [--recover-base URI
        [--recover-base-revision R] [--expected-checksum F]] [--to-safetensors]
    alpaca-weights key --source URI [--revision R] [--recover-base URI] [--to-safetensors]
    alpaca-weights verify --dest DIR
    alpaca-weights recover --diff DIR --base DIR --out DIR [--expected-checksum F] [--dtype D]
    alpaca-weights convert DIR

Exit 0 on success, 1 when a retry may help (stall, network), 3 when it cannot (see
`errors.REASONS`); on failure the termination message is `Reason: message`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from alpaca_weights import cache, contract, errors, manifest
from alpaca_weights.errors import WeightsError

TERMINATION_LOG = "/dev/termination-log"
MESSAGE_LIMIT = 4096  # what the kubelet keeps of a termination message


def _identity_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="hf://, s3://, gs://, http(s):// or a path")
    parser.add_argument("--revision", help="branch, tag or commit (hf://)")
    parser.add_argument("--recover-base", help="LLaMA base the source is a weight diff against")
    parser.add_argument("--recover-base-revision")
    parser.add_argument("--to-safetensors", action="store_true", help="convert .bin checkpoints")


def _fill_args(parser: argparse.ArgumentParser) -> None:
    _identity_args(parser)
    parser.add_argument("--dest", required=True, type=Path, help="the cache volume's mount")
    parser.add_argument(
        "--key",
        help="the cache's name as the operator knows it (its PVC); computed from the identity "
        "when absent (the operator's identity names pvc:// sources, the CLI sees their mount)",
    )
    parser.add_argument("--expected-checksum", type=float, help="recovery integrity check value")
    parser.add_argument("--include", action="append", default=[], help="only files matching")
    parser.add_argument("--exclude", action="append", default=[], help="skip files matching")
    parser.add_argument("--workers", type=int, default=4, help="files downloaded at once")
    parser.add_argument("--retries", type=int, default=5, help="attempts per file after the first")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay (doubles)")
    parser.add_argument(
        "--stall-seconds", type=float, default=60.0, help="no bytes this long = stall"
    )
    parser.add_argument("--progress-interval", type=float, default=5.0)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="alpaca-weights", description=__doc__.split("\n")[0])
    top.add_argument(
        "--termination-log",
        default=os.environ.get("ALPACA_TERMINATION_LOG", TERMINATION_LOG),
        help="where the failure reason is written (env ALPACA_TERMINATION_LOG)",
    )
    sub = top.add_subparsers(dest="command", required=True)
    _fill_args(sub.add_parser("fill", help="fill a cache once (download, recover, convert)"))
    _identity_args(sub.add_parser("key", help="print the cache key (the PVC name)"))
    sub.add_parser("verify", help="re-hash a filled cache").add_argument(
        "--dest", type=Path, required=True
    )
    rec = sub.add_parser("recover", help="recover a model from a weight diff and its base")
    rec.add_argument("--diff", type=Path, required=True)
    rec.add_argument("--base", type=Path, required=True)
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--expected-checksum", type=float)
    rec.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    sub.add_parser("convert", help=".bin checkpoints to safetensors").add_argument(
        "folder", type=Path
    )
    return top


def _fill(args: argparse.Namespace) -> str:
    from alpaca_weights import download, fill, progress

    req = fill.FillRequest(
        source=args.source,
        dest=args.dest,
        revision=args.revision,
        recover_base=args.recover_base,
        recover_base_revision=args.recover_base_revision,
        expected_checksum=args.expected_checksum,
        to_safetensors=args.to_safetensors,
        key=args.key,
        include=args.include,
        exclude=args.exclude,
        settings=download.Settings(
            workers=args.workers,
            retries=args.retries,
            backoff=args.backoff,
            stall_seconds=args.stall_seconds,
        ),
    )
    prog = progress.Progress()
    patch = progress.job_patcher(req.env)
    with progress.Publisher(prog, args.dest, args.progress_interval, patch):
        result = fill.fill(req, prog)
    if result.reused:
        return f"Reused: {result.key} was already filled ({result.total_bytes} bytes); 0 downloaded"
    extra = f", checksum {result.checksum:.4f}" if result.checksum is not None else ""
    return f"Filled: {result.key} holds {result.total_bytes} bytes{extra}"


def _run(args: argparse.Namespace) -> str:
    if args.command == "fill":
        return _fill(args)
    if args.command == "key":
        return cache.cache_key(
            args.source,
            args.revision,
            args.recover_base,
            args.recover_base_revision,
            args.to_safetensors,
        )
    if args.command == "verify":
        manifest.require_verified(args.dest)
        return f"Verified: {args.dest}"
    if args.command == "recover":
        from alpaca_weights import convert, recover

        for folder in (args.diff, args.base):
            convert.convert_folder(folder)
        checksum = recover.recover(
            args.diff, args.base, args.out, args.expected_checksum, args.dtype
        )
        return f"Recovered: {args.out}, checksum {checksum:.4f}"
    from alpaca_weights import convert

    written = convert.convert_folder(args.folder)
    return f"Converted: {len(written)} files"


def _terminate(path: str, message: str) -> None:
    """Write the termination message (best effort: outside a pod the path may not exist)."""
    try:
        with open(path, "w") as fh:
            fh.write(message.encode()[:MESSAGE_LIMIT].decode(errors="ignore"))
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        summary = _run(args)
    except WeightsError as exc:
        message = contract.termination_message(exc.reason, exc.message)
        print(f"[alpaca-weights] {message}", file=sys.stderr, flush=True)
        _terminate(args.termination_log, message)
        return exc.exit_code
    except Exception as exc:
        traceback.print_exc()
        _terminate(
            args.termination_log,
            contract.termination_message(errors.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"),
        )
        return errors.EXIT_RETRY
    print(summary, flush=True)
    if args.command == "fill":
        _terminate(args.termination_log, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
