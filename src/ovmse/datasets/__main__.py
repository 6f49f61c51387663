"""Command line for offline datasets: ``python -m ovmse.datasets <command> ...``.

Commands::

    # Table 8 rows (size, return min / avg / max, win rate, mean episode length), computed
    # from the stored episodes after a full validation (--validate structure: faster)
    python -m ovmse.datasets inspect data/2s3z/medium data/2s3z/medium_replay
    python -m ovmse.datasets inspect data/*/medium --markdown

    # ... plus the Figure 5 histogram of episode returns, written as PNG
    python -m ovmse.datasets inspect data/2s3z/medium data/2s3z/medium_replay --plot fig5_2s3z.png

    # Full validation only: "OK <path>: <episodes> episodes, <transitions> transitions", and the
    # episodes' digest checked against the one dataset.json records (sets written since it exists)
    python -m ovmse.datasets validate data/*/*/

    # The episodes' SHA-256 (the same for two copies or two collections of one set)
    python -m ovmse.datasets digest data/2s3z/medium /elsewhere/2s3z/medium

    # Convert a CFCQL file ({map}_{quality}.h5) into data/<map>/<quality>/ (or --out DIR)
    python -m ovmse.datasets import-cfcql 2s3z_medium.h5 --data-root data
    python -m ovmse.datasets import-cfcql some.h5 --map 2s3z --quality medium --out /tmp/ds --overwrite

An invalid dataset (:class:`~ovmse.datasets.DatasetError`), an existing output directory
or a missing importer dependency prints one message on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .format import QUALITIES, content_digest
from .loading import load_dataset
from .validation import DatasetError

EXIT_ERROR = 2


def _error(message: object) -> None:
    print(f"error: {message}", file=sys.stderr)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import format_table8, plot_return_distribution, table8_row

    datasets = []
    for path in args.paths:
        try:
            datasets.append(load_dataset(path, validate=args.validate, in_memory=False))
        except DatasetError as err:
            _error(err)
            return EXIT_ERROR
    print(format_table8([table8_row(d) for d in datasets], markdown=args.markdown))
    if args.plot is not None:
        plot_return_distribution(datasets, path=args.plot)
        print(f"\nreturn distribution (Figure 5) written to {args.plot}")
    return 0


def _with_digests(paths: list[Path], validate: str):
    """``(path, dataset, recorded digest, found digest)`` of each dataset in turn; one that does
    not load is reported on stderr and yields ``(path, None, None, None)``."""
    for path in paths:
        try:
            ds = load_dataset(path, validate=validate, in_memory=False)
        except DatasetError as err:
            _error(err)
            yield path, None, None, None
            continue
        yield path, ds, ds.metadata.get("content_sha256"), content_digest(path, ds.spec)


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path, ds, recorded, found in _with_digests(args.paths, "full"):
        if ds is not None and recorded is not None and recorded != found:
            _error(f"dataset {path}: the episodes' SHA-256 is {found}, dataset.json records {recorded}: the files "
                   "changed after the set was written (a damaged or edited copy)")
        if ds is None or (recorded is not None and recorded != found):
            status = EXIT_ERROR
            continue
        digest = f"SHA-256 {found[:12]} as recorded" if recorded else f"SHA-256 {found[:12]} (none recorded)"
        print(f"OK {path}: {len(ds)} episodes, {ds.n_transitions} transitions, {digest}", flush=True)
    return status


def cmd_digest(args: argparse.Namespace) -> int:
    status = 0
    for path, ds, recorded, found in _with_digests(args.paths, "structure"):
        if ds is None:
            status = EXIT_ERROR
            continue
        note = "" if recorded is None else ("  (as recorded)" if recorded == found else f"  (dataset.json records {recorded})")
        print(f"{found}  {path}{note}", flush=True)
    return status


def cmd_import_cfcql(args: argparse.Namespace) -> int:
    from .inspection import format_table8, table8_row

    try:
        from .cfcql import import_cfcql

        out = import_cfcql(args.file, args.out, map_name=args.map, quality=args.quality,
                           data_root=args.data_root, overwrite=args.overwrite)
        ds = load_dataset(out, validate="structure", in_memory=False)
    except (DatasetError, FileExistsError, FileNotFoundError, ImportError) as err:
        _error(err)
        return EXIT_ERROR
    print(f"imported {args.file} -> {out}")
    print(format_table8([table8_row(ds)]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ovmse.datasets",
        description="Inspect, validate and import offline datasets (data/<map>/<quality>/).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Commands::", 1)[1].split("An invalid dataset", 1)[0].rstrip(),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="print Table 8 rows; --plot writes the Figure 5 histogram")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="dataset directories")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="write the return histogram (PNG) here")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--validate", choices=("full", "structure"), default="full",
                   help="check every episode (full, default) or only metadata/files/dims (structure)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("validate", help="fully validate datasets; exit status 2 if any is invalid")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="dataset directories")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("digest", help="print each dataset's episodes' SHA-256 (and whether dataset.json records it)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="dataset directories")
    p.set_defaults(func=cmd_digest)

    p = sub.add_parser("import-cfcql", help="convert a CFCQL .h5 file into a dataset directory")
    p.add_argument("file", type=Path, metavar="FILE.h5", help="CFCQL file, e.g. 2s3z_medium.h5")
    p.add_argument("--map", help="map name (default: from the file name {map}_{quality}.h5)")
    p.add_argument("--quality", choices=QUALITIES, help="dataset quality (default: from the file name)")
    p.add_argument("--data-root", default="data", help="write to DATA_ROOT/<map>/<quality> (default: data)")
    p.add_argument("--out", type=Path, metavar="DIR", help="write to DIR instead of under --data-root")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset directory")
    p.set_defaults(func=cmd_import_cfcql)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
