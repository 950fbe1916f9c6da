"""The quantbench command: fixtures, formats, inspect (and gate, report, peaks, export).

Every user error is one line on stderr naming the file and the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import QuantbenchError


def _device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cmd_fixtures_build(args) -> int:
    from .formats import parse_formats
    from .models import build_fixtures
    formats = parse_formats(args.formats)
    for model in args.model:
        built = build_fixtures(model, formats, _device(args.device), force=args.force)
        for kind, path in built.items():
            print(f"{model:>16} {kind:<10} {path}")
    return 0


def cmd_fixtures_list(args) -> int:
    from .specs import available_specs, load_spec
    for name in available_specs():
        spec = load_spec(name)
        print(f"{name:<16} {spec.architecture:<8} {spec.parameter_count() / 1e9:6.2f}B params  "
              f"hidden {spec.hidden_size}, {spec.num_hidden_layers} layers  ({spec.source})")
    return 0


def cmd_formats(args) -> int:
    from .formats import FORMATS
    for fmt in FORMATS.values():
        print(f"{fmt.name:<18} {fmt.checkpoint:<10} {fmt.runtime:<32} {fmt.description}")
    return 0


def cmd_inspect(args) -> int:
    from .models import detect_checkpoint
    status = 0
    for path in args.path:
        try:
            found = detect_checkpoint(path)
            print(json.dumps({"path": str(found.path), "kind": found.kind, "formats": list(found.formats),
                              "quant_method": found.quant_method}))
        except QuantbenchError as exc:
            print(f"quantbench: error: {exc.line()}", file=sys.stderr)
            status = 2
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    fixtures = sub.add_parser("fixtures", help="synthetic model checkpoints")
    fsub = fixtures.add_subparsers(dest="fixtures_command", required=True)
    build = fsub.add_parser("build", help="build (or reuse cached) checkpoints for a spec")
    build.add_argument("--model", action="append", required=True, help="spec name or .toml path (repeatable)")
    build.add_argument("--formats", default="all")
    build.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(func=cmd_fixtures_build)
    fsub.add_parser("list", help="list model specs").set_defaults(func=cmd_fixtures_list)

    sub.add_parser("formats", help="list registered formats").set_defaults(func=cmd_formats)
    inspect = sub.add_parser("inspect", help="detect the format of checkpoint directories")
    inspect.add_argument("path", nargs="+")
    inspect.set_defaults(func=cmd_inspect)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QuantbenchError as exc:
        print(f"quantbench: error: {exc.line()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
