"""The serving suite's load generator: vLLM's own benchmark client (``vllm bench serve``), kept running in a
child process for one server, one client run per line it reads.

Protocol: each stdin line is a JSON list of ``vllm bench serve`` arguments (parsed by vLLM's own parser, so
every option means what it means there, and ``--save-result`` writes vLLM's result JSON); each run answers
one stdout line, ``{"ok": true}`` or ``{"error": "..."}``. vLLM prints its report table, which goes to
stderr. Why a child: the client's ``main`` runs ``asyncio.run`` and freezes the garbage collector of its
whole process, and importing vLLM costs seconds, paid once per server this way.
"""

from __future__ import annotations

import contextlib
import json
import sys


def serve_forever(stdin=sys.stdin, stdout=sys.stdout) -> None:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    print(json.dumps({"ready": True}), file=stdout, flush=True)
    for line in stdin:
        try:
            args = parser.parse_args(json.loads(line))
            with contextlib.redirect_stdout(sys.stderr):
                main(args)
            reply = {"ok": True}
        except SystemExit as exc:  # argparse's own refusal
            reply = {"error": f"vLLM's client refused its arguments (exit {exc.code})"}
        except BaseException as exc:  # noqa: BLE001 - the client's failure is the case's state, said by the parent
            reply = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"}
        print(json.dumps(reply), file=stdout, flush=True)


if __name__ == "__main__":
    serve_forever()
