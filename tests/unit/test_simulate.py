"""`tiered simulate` on the shipped traces, its trace parser and load model, and its usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiered_operator.api.model import InferenceTierSpec
from tiered_operator.cli import main
from tiered_operator.cli.simulate import LoadModel, Point, TraceError, parse_trace, replay

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIER_AND_POLICY = ["-f", str(EXAMPLES / "tier-awq-h100.yaml"), "-f", str(EXAMPLES / "policy-frontier.yaml")]
TRACES = {
    "step-utilization.csv": ["--trace-replicas", "2"],
    "workday-rps.csv": ["--replica-rps", "16"],
    "oscillation-85.csv": [],
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["simulate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_shipped_trace_has_a_case() -> None:
    assert {p.name for p in (EXAMPLES / "traces").iterdir()} == set(TRACES)


@pytest.mark.parametrize("name", sorted(TRACES))
def test_shipped_traces_replay(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *TIER_AND_POLICY, "--trace", str(EXAMPLES / "traces" / name), *TRACES[name])
    assert (code, err) == (0, "")
    assert "InferenceTier triage" in out and "GPU-hours" in out and "time in burst" in out


def test_workday_bursts_once_at_max_replicas_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "workday.png"
    trace = str(EXAMPLES / "traces" / "workday-rps.csv")
    code, out, _ = run(capsys, *TIER_AND_POLICY, "--trace", trace, "--replica-rps", "16", "--plot", str(png))
    assert code == 0
    assert out.count("BurstStarted") == 1 and "tier at max replicas" in out
    assert out.count("BurstEnded") == 1 and "(1 entries, 1 exits)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_oscillation_around_85_never_bursts(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, *TIER_AND_POLICY, "--trace", str(EXAMPLES / "traces" / "oscillation-85.csv"))
    assert "Burst" not in out.split("event", 1)[1].rsplit("GPU-hours", 1)[0]
    assert "time in burst 0.0% (0 entries, 0 exits)" in out


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("trace", "extra", "message"),
    [
        ("t,utilization\n0,1\n15,2\n", [], "bad.csv:1: header must be timestamp,utilization"),
        ("timestamp,utilization\n0,50\n15,fifty\n", [], "bad.csv:3: utilization 'fifty' is not a number"),
        ("# c\ntimestamp,rps\n0,1\n0,2\n", ["--replica-rps", "5"], "bad.csv:4: timestamp 0 does not"),
        ("timestamp,utilization\n0,50\nyesterday,2\n", [], "bad.csv:3: timestamp 'yesterday' is neither"),
        ("timestamp,utilization\n0,-5\n15,1\n", [], "bad.csv:2: utilization must be a finite number ≥ 0"),
        ("timestamp,utilization\n0,5,6\n", [], "bad.csv:2: expected 2 fields, found 3"),
        ("timestamp,utilization\n0,5\n", [], "bad.csv:2: a trace needs at least two points"),
        ("", [], "bad.csv:1: empty trace"),
        ("timestamp,rps\n0,5\n15,6\n", [], "bad.csv: an rps trace needs --replica-rps"),
    ],
)
def test_bad_traces_exit_2_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trace: str, extra: list[str], message: str
) -> None:
    code, out, err = run(capsys, *TIER_AND_POLICY, "--trace", write(tmp_path, "bad.csv", trace), *extra)
    assert code == 2 and out == ""
    assert err.startswith("tiered simulate: ") and message in err, err


def test_bad_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write(tmp_path, "ok.csv", "timestamp,utilization\n0,50\n15,60\n")
    code, _, err = run(capsys, "-f", str(tmp_path / "missing.yaml"), "--trace", trace)
    assert code == 2 and "cannot read" in err and "missing.yaml" in err
    code, _, err = run(capsys, *TIER_AND_POLICY, "--trace", str(tmp_path / "missing.csv"))
    assert code == 2 and "missing.csv" in err
    code, _, err = run(capsys, "-f", str(EXAMPLES / "policy-frontier.yaml"), "--trace", trace)
    assert code == 2 and "expected exactly one InferenceTier" in err
    code, _, err = run(capsys, *TIER_AND_POLICY, "--trace", trace, "--tier", "nope")
    assert code == 2 and "expected InferenceTier 'nope', found 0" in err


def test_parse_trace_accepts_iso_times_and_blank_values() -> None:
    trace = parse_trace("timestamp,rps\n2026-01-01T00:00:00Z,3\n2026-01-01T00:01:00+00:00,\n")
    assert trace.kind == "rps"
    assert trace.points[1].t - trace.points[0].t == 60 and trace.points[1].value is None
    with pytest.raises(TraceError) as raised:
        parse_trace("timestamp,utilization\n0,nan\n")
    assert raised.value.line == 2


@pytest.mark.parametrize(
    ("model", "value", "replicas", "signal"),
    [
        (LoadModel(), 93.0, 5, 93.0),  # open loop: as recorded
        (LoadModel(per_replica=50.0), 90.0, 2, 90.0),  # 90 % on 2 replicas...
        (LoadModel(per_replica=50.0), 90.0, 3, 60.0),  # ...is 60 % on 3
        (LoadModel(per_replica=50.0), 90.0, 1, 100.0),  # ...and saturates 1
        (LoadModel(per_replica=16.0), 32.0, 4, 50.0),  # 32 rps on 4 replicas of 16 rps
        (LoadModel(per_replica=16.0), 32.0, 0, None),  # no replicas, no GPU signal
        (LoadModel(per_replica=16.0), None, 4, None),
    ],
)
def test_load_model(model: LoadModel, value: float | None, replicas: int, signal: float | None) -> None:
    assert model.signal(value, replicas) == signal


def test_a_gap_in_the_trace_holds_replicas() -> None:
    spec = InferenceTierSpec.model_validate(
        {"model": {"id": "m", "source": "hf://m", "parameters": "8B"}, "replicas": {"min": 1, "max": 8},
         "autoscaling": {"scaleDownStabilizationSeconds": 0}}
    )  # fmt: skip
    points = (Point(0, 10.0), Point(15, 10.0), Point(1000, 10.0))  # 985 s without data
    ticks = replay(points, spec, None, LoadModel(), interval=15, replicas=4)
    assert [t.replicas for t in ticks[:2]] == [1, 1]  # 4 → 1 at once (no down window), then at min
    held = replay(points, spec, None, LoadModel(), interval=15, replicas=4, start=200)
    assert {t.replicas for t in held if t.t < 1000} == {4}  # stale: held, not scaled to min
    assert all(t.scaling.reason == "MetricsStale" for t in held if t.t < 1000)
