"""The ``rlp-data`` command: ``prepare``, ``inspect`` and ``verify``.

Every user error ends as one line ``rlp-data: error: <value, rule, fix>`` on stderr; no traceback. Exit codes, one
rule for every subcommand: 0 done; 1 the data, a store or the machine is at fault (an unreadable or malformed input,
a missing bucket, a full disk, a refused write, ``verify`` finding a problem); 2 the command line is at fault (an
unknown flag, a value out of range, a flag that does not fit the input); 130 interrupted (Ctrl-C: rerun the same
command to resume). ``main(argv)`` returns the exit code. The error line always starts a line of its own, also after
a progress bar's carriage-return text in a log file.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import DataError, UsageError

# Each subcommand's module (and the heavy libraries it loads) is imported when that subcommand runs, so
# ``rlp-data --help`` and a mistyped command answer at once.
__all__ = ['main', 'build_parser']

EXAMPLES = """examples:
  rlp-data prepare --input 'corpus/*.jsonl' --tokenizer gpt2 --eos-text '<|endoftext|>' --seq-len 2048 \\
      --out data/web --workers 8
  rlp-data prepare --input 'hf:allenai/c4?name=en&split=train' --tokenizer meta-llama/Llama-3.2-1B \\
      --seq-len 4096 --out s3://bucket/c4 --workers 16
  rlp-data inspect data/web
  rlp-data verify s3://bucket/c4
"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(f'{message}; fix: see `{self.prog} --help`')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog='rlp-data',
        description='Prepare tokenised, packed MDS datasets for RLP pretraining.',
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)

    p = sub.add_parser(
        'prepare',
        help='raw corpora -> tokenised, packed MDS shards + manifest.json',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        '--input',
        '-i',
        dest='inputs',
        nargs='+',
        action='extend',
        required=True,
        metavar='SRC',
        help='jsonl/json/txt/parquet files, folders, globs, webdataset tars (brace lists ok), '
        's3:// objects or prefixes, save_to_disk folders (PATH[?split=S]), or '
        'hf:NAME[?name=CONFIG&split=S&revision=R&data_files=GLOB]; repeatable, order kept',
    )
    p.add_argument('--tokenizer', required=True, help='HF tokenizer hub name or local folder')
    p.add_argument('--seq-len', type=int, required=True, help='tokens per sample')
    p.add_argument('--out', required=True, help='output folder or object-store URI (s3://, gs://, ...)')
    p.add_argument(
        '--pack',
        choices=['concat', 'none'],
        default='concat',
        help='concat: documents wrap across fixed-size samples, final partial sample dropped; '
        'none: one document per sample, long documents split at seq-len',
    )
    p.add_argument(
        '--dtype',
        choices=['auto', 'uint16', 'uint32'],
        default='auto',
        help='token dtype; auto = uint16 when the vocabulary fits',
    )
    p.add_argument('--text-field', default='text', help='record field (or webdataset extension) holding the text')
    p.add_argument('--bos-text', default=None, help='text added before every document (tokenised without specials)')
    p.add_argument(
        '--eos-text',
        default=None,
        help="text added after every document, e.g. '<|endoftext|>'; required when the tokenizer adds "
        'neither BOS nor EOS itself',
    )
    p.add_argument(
        '--on-bad-record',
        choices=['skip', 'fail'],
        default='fail',
        help='non-UTF-8 / malformed records: fail, or skip and count them',
    )
    p.add_argument('--workers', type=int, default=1, help='worker processes (the output does not depend on it)')
    p.add_argument('--overwrite', action='store_true', help='replace a different dataset already at --out')
    p.add_argument(
        '--staging',
        default=None,
        help='local staging folder for a remote --out (default: ~/.cache/rlp-data/<hash>); '
        'for a local --out, staging lives in OUT/.rlp-data',
    )
    p.add_argument(
        '--chunk-mb',
        type=float,
        default=16.0,
        help='unit of parallel work: large jsonl/parquet/save_to_disk inputs are split into chunks of '
        'about this size and small files are merged up to it (the output does not depend on it)',
    )
    p.add_argument('--shard-mb', type=float, default=64.0, help='raw (uncompressed) size limit of an MDS shard')
    p.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True, help='show a progress bar')

    i = sub.add_parser('inspect', help='print the manifest, counts and a few decoded samples')
    i.add_argument('path', help='dataset folder or object-store URI')
    i.add_argument('--samples', type=int, default=3, help='number of samples to decode')

    v = sub.add_parser('verify', help='check hashes, schema, token range and doc_starts; non-zero exit on problems')
    v.add_argument('path', help='dataset folder or object-store URI')
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == 'prepare':
        from pipeline.prepare import PrepareArgs, prepare

        fields = {k: v for k, v in vars(args).items() if k != 'command'}
        prepare(PrepareArgs(**fields))
        return 0
    from pipeline.prepare_args import check_dataset_scheme

    check_dataset_scheme(args.path, 'the dataset', 'pass the --out of rlp-data prepare')
    if args.command == 'inspect':
        from pipeline.dataset.inspect import inspect_dataset

        inspect_dataset(args.path, args.samples)
        return 0
    from pipeline.dataset.verify import verify_dataset

    return verify_dataset(args.path)


class _LineTracker:
    """``sys.stderr`` that remembers whether its last character ended a line (progress bars end theirs with ``\r``)."""

    def __init__(self, stream):
        self._stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith('\n')
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _error(tracker: _LineTracker, message: str) -> None:
    print(('' if tracker.at_line_start else '\n') + f'rlp-data: error: {message}', file=tracker)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rlp-data`` console script; returns the exit code (see the module docstring)."""
    stderr, tracker = sys.stderr, _LineTracker(sys.stderr)
    sys.stderr = tracker
    try:
        args = build_parser().parse_args(argv)
        return _run(args)
    except DataError as exc:
        _error(tracker, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error(tracker, 'interrupted; rerun the same command to resume')
        return 130
    except OSError as exc:  # a full disk or a refused write in the middle of the work: finished units are kept
        where = f' on {exc.filename!r}' if exc.filename else ''
        _error(
            tracker,
            f'{exc.strerror or type(exc).__name__}{where} ({type(exc).__name__}, errno {exc.errno}); finished work is '
            f'kept; fix: free space or fix permissions there, then rerun the same command to resume',
        )
        return 1
    finally:
        sys.stderr = stderr


if __name__ == '__main__':
    sys.exit(main())
