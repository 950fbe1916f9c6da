"""`quantbench bisect` over a fake package index: releases of a fake library ``qbslow`` (handmade wheels), from one
of which every call is 10 ms slower, one that needs a numpy this stack does not have (unbuildable: stepped over),
and one that aborts (the case crashes there: a result). The search itself is tested pure."""

import base64
import hashlib
import zipfile

import pytest

from quantbench.bisect.search import Probe, next_probe, outcome, releases_between

from .conftest import run_cli

pytestmark = pytest.mark.stack_independent

VERSIONS = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0", "1.6.0"]
SLOW_FROM = "1.2.0"
UNBUILDABLE = "1.3.0"
CRASHES = "1.6.0"  # the --bad end: bad because the case crashes there (one pair: the state is the result)


def _source(version: str) -> str:
    if version == CRASHES:
        return "import os\n\n\ndef work():\n    os.abort()\n"
    seconds = 0.010 if VERSIONS.index(version) >= VERSIONS.index(SLOW_FROM) else 0.0
    return ("import time\n\n\ndef work():\n    end = time.perf_counter() + " + repr(seconds) + "\n"
            "    while time.perf_counter() < end:\n        pass\n")


def _wheel(folder, version: str) -> None:
    """A minimal pure-Python wheel (PEP 427): the module, METADATA, WHEEL and a RECORD with its hashes."""
    dist = f"qbslow-{version}.dist-info"
    requires = "Requires-Dist: numpy>=99\n" if version == UNBUILDABLE else ""
    files = {"qbslow/__init__.py": _source(version),
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: qbslow\nVersion: {version}\n{requires}",
             f"{dist}/WHEEL": ("Wheel-Version: 1.0\nGenerator: quantbench-tests\nRoot-Is-Purelib: true\n"
                               "Tag: py3-none-any\n")}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"qbslow-{version}-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


@pytest.fixture(scope="module")
def fake_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("index")
    for version in VERSIONS:
        _wheel(folder, version)
    return folder


@pytest.mark.timing  # A/B pairs side by side, one core each
def test_a_planted_slow_release_is_found_past_an_unbuildable_and_a_crashing_one(fake_index, tiny_checkpoints,
                                                                                tmp_path):
    out = run_cli("bisect", "--package", "qbslow", "--good", "1.0.0", "--bad", VERSIONS[-1],
                  "--case", "tiny-bf16-qbslow-release-b1-p8-decode", "--plugin", "tests.release_runtime",
                  "--no-index", "--find-links", str(fake_index), "--pairs", "5", "--rounds", "3", "--new-tokens", "4",
                  "--history", str(tmp_path / "history"), "--cache", str(tmp_path / "cache"), timeout=1500)
    print(out.stdout[-4000:], out.stderr[-3000:])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  1.")}
    assert "unbuildable: needs numpy>=99 (the stack has" in lines[UNBUILDABLE]   # stepped over, in pip's terms
    assert "bad" in lines[CRASHES] and "crashed: " in lines[CRASHES] and "SIGABRT" in lines[CRASHES]  # a result
    assert "bad" in lines[SLOW_FROM] and "ratio 0." in lines[SLOW_FROM] and "good" in lines["1.1.0"]
    assert "first bad release: 1.2.0 (the release before it, 1.1.0, is good)" in out.stdout
    assert list(lines) == [CRASHES, UNBUILDABLE, SLOW_FROM, "1.1.0"]  # the order it probed them in
    assert len(list((tmp_path / "history").rglob("2*.json"))) == 2 * (1 + 5 + 5)  # the probes' runs, stored


def test_the_search_steps_over_unbuildable_releases_and_says_when_they_hide_the_answer():
    releases = releases_between(["2.0", "1.0", "1.1", "1.2", "1.3", "0.9", "1.2rc1"], "1.0", "1.3")
    assert releases == ["1.0", "1.1", "1.2", "1.3"]
    probes = {}
    assert next_probe(releases, probes) == "1.3"
    probes["1.3"] = Probe("1.3", "bad", 0.8, 0.01)
    assert next_probe(releases, probes) == "1.1"
    probes["1.1"] = Probe("1.1", "unbuildable", why="pip: no")
    assert next_probe(releases, probes) == "1.2"
    probes["1.2"] = Probe("1.2", "bad", 0.8, 0.01)
    assert next_probe(releases, probes) is None
    assert outcome(releases, probes)[0] is None and "one of 1.1, 1.2" in outcome(releases, probes)[1]
    not_bad = {"1.3": Probe("1.3", "good", 0.99, 0.4)}
    assert next_probe(releases, not_bad) is None and "nothing to bisect" in outcome(releases, not_bad)[1]
    with pytest.raises(ValueError, match="must be older"):
        releases_between(["1.0", "1.1"], "1.1", "1.0")


def test_a_release_whose_run_fails_without_a_stated_case_is_a_result_not_an_error(tmp_path):
    """A release that raises inside the case (no state to read, so pytest-benchmark writes no JSON) is that probe's
    result, in pytest's words; the good release's run failing stays an error."""
    from quantbench.bisect.probe import Target, timed_probe
    from quantbench.gate.decisions import Threshold

    (tmp_path / "conftest.py").write_text('pytest_plugins = ["quantbench.plugin"]\n')  # as the repository's
    (tmp_path / "test_case.py").write_text("import qbflag\n\n\ndef test_case(benchmark):\n"
                                           "    benchmark(qbflag.work)\n")
    good, broken = tmp_path / "good", tmp_path / "broken"
    for folder, body in ((good, "def work():\n    return 1\n"),
                         (broken, "def work():\n    raise RuntimeError('qbflag 2.0 removed work()')\n")):
        folder.mkdir()
        (folder / "qbflag.py").write_text(body)
    target = Target("test_case", "ops", (str(tmp_path / "test_case.py"),))
    probe = timed_probe("2.0", target, {"good": good, "probe": broken}, 5, str(tmp_path / "history"),
                        tmp_path / "runs", tmp_path, Threshold())
    assert probe.verdict == "bad" and "RuntimeError: qbflag 2.0 removed work()" in probe.why, probe
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1  # one pair: the failure is the answer
