"""Run every benchmark in one go and write bench/RESULTS.md: `python bench/run_all.py [--quick]`.

Sections: 1 translation in process (against zeep), 2 end to end over HTTP (gateway, passthrough, direct; wrk),
with the live profile (py-spy) and the scaling chart bench/scaling.png, 3 memory of one worker, 4 the production
features' cost in process, 5 the event pipeline's webhook intake, 6 hostile inputs in process, 7 update jobs
(Prefer: respond-async against synchronous updates, and the event worker's drain of queued jobs). Every server is
started on a free 127.0.0.1 port and stopped before the script ends, whatever happens.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chart import draw_scaling_chart
from bench.events import run_event_pipeline
from bench.features import run_features
from bench.hostile_inputs import run_hostile_inputs
from bench.jobs import run_update_jobs
from bench.load import run_end_to_end
from bench.measure import Budget
from bench.memory import run_memory
from bench.report import commit, results_document
from bench.servers import running_deployment
from bench.translate import run_translation
from bench.workload import ROOT

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def command_line() -> str:
    """The command as it was typed, with the interpreter relative to the repository when it lies inside."""
    interpreter = Path(sys.executable)
    if interpreter.is_relative_to(ROOT):
        interpreter = interpreter.relative_to(ROOT)
    return shlex.join([str(interpreter), *sys.argv])


def main() -> None:
    """Run the sections in order and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fraction of the work, for smoke tests")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"where to write (default {RESULTS})")
    options = parser.parse_args()
    # A SIGTERM unwinds like Ctrl-C, so every server started so far is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    budget = Budget.smoke() if options.quick else Budget.full()
    # read before the run, which rewrites the live profiles in bench/profiles/
    revision, started_at, started = commit(), datetime.now(UTC), time.monotonic()

    translation = run_translation(budget)
    with running_deployment(gateway_workers=2, with_passthrough=True) as deployment:
        load = run_end_to_end(deployment, budget)
    with running_deployment(gateway_workers=1, with_passthrough=False) as deployment:
        memory = run_memory(deployment, budget)
    features = run_features(budget)
    events = run_event_pipeline(budget)
    hostile = run_hostile_inputs(budget)
    jobs = run_update_jobs(budget)
    chart = draw_scaling_chart(load, options.output.with_name("scaling.png"))
    load.method += f"\n\n![throughput and p99 against concurrency]({chart.name})"

    seconds = time.monotonic() - started
    sections = [translation, load, memory, features, events, hostile, jobs]
    options.output.write_text(results_document(sections, command=command_line(), revision=revision, started=started_at,
                                               seconds=seconds, quick=options.quick, previous=options.output))
    print(f"\nwrote {options.output} after {seconds / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
