"""eventide against DuckDB on the same file (see peers.sh, which runs this)."""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# DuckDB's side: the same windows eventide computes, from the same NDJSON file.
DUCKDB = r"""
import sys, duckdb
path, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute(f'''
CREATE TEMP TABLE ev AS
SELECT DISTINCT ON (eventId) eventId, deviceId, type, value, createdAt
FROM read_ndjson('{path}', columns = {{
    eventId: 'VARCHAR', deviceId: 'VARCHAR', deviceSequenceNumber: 'UBIGINT',
    type: 'VARCHAR', value: 'DOUBLE', createdAt: 'TIMESTAMP'}}, ignore_errors = true)
''')
con.execute(f'''
COPY (
  SELECT 'tumbling_1m' AS window, deviceId, type,
         time_bucket(INTERVAL 1 MINUTE, createdAt) AS windowStart,
         count(*) AS count, sum(value) AS sum, avg(value) AS avg, min(value) AS min, max(value) AS max
  FROM ev GROUP BY ALL
  UNION ALL
  SELECT 'sliding_5m', deviceId, type, windowStart,
         count(*), sum(value), avg(value), min(value), max(value)
  FROM (SELECT deviceId, type, value,
               time_bucket(INTERVAL 1 MINUTE, createdAt) - to_minutes(k) AS windowStart
        FROM ev, range(5) AS r(k))
  GROUP BY ALL
) TO '{out}' (FORMAT json)
''')
"""

# eventide's side: the example config's windows and rule, dedupe by eventId (as DuckDB
# is asked to), the input and outputs in the run's directory.
CONFIG = Path(__file__).resolve().parent.parent / "config" / "file.toml"


def eventide_config(data, out, dead):
    text = CONFIG.read_text()
    for old, new in [('path = "events.ndjson"', f'path = "{data}"'),
                     ('dedupe = "both"', 'dedupe = "event_id"'),
                     ('path = "out/windows.jsonl"', f'path = "{out}"'),
                     ('path = "out/dead-letter.jsonl"', f'path = "{dead}"')]:
        if old not in text:
            sys.exit(f"config/file.toml has no {old!r}")
        text = text.replace(old, new)
    return text


def run(cmd, env=None):
    """Runs cmd; returns wall seconds, CPU seconds and peak RSS (MiB) of the process."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed:\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def lines(path):
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--eventide", required=True)
    ap.add_argument("--simulator", required=True)
    a = ap.parse_args()
    import duckdb

    d = tempfile.mkdtemp(prefix="eventide-peers-")
    try:
        data = os.path.join(d, "events.ndjson")
        subprocess.run([a.simulator, "--count", str(a.events), "--devices", "2000",
                        "--complex-fields", "20", "--hot-devices", "40", "--layout", "sas",
                        "-o", data], check=True)
        with open(data, "rb") as f:  # into the page cache: both engines read it warm
            while f.read(1 << 24):
                pass
        cfg = os.path.join(d, "eventide.toml")
        out, dead = os.path.join(d, "out.jsonl"), os.path.join(d, "dead.jsonl")
        with open(cfg, "w") as f:
            f.write(eventide_config(data, out, dead))
        script = os.path.join(d, "duck.py")
        with open(script, "w") as f:
            f.write(DUCKDB)
        duck_out = os.path.join(d, "duck.json")
        env = dict(os.environ, EVENTIDE_LOG="warn")
        results = {"eventide": [], "duckdb": []}
        for _ in range(a.runs):  # alternating, so that both see the same machine
            results["eventide"].append(run([a.eventide, "run", "--config", cfg], env))
            results["duckdb"].append(run([sys.executable, script, data, duck_out]))
        rows = {"eventide": sum(1 for l in open(out) if '"window"' in l and '"rule"' not in l),
                "duckdb": lines(duck_out)}
        print(f"peers: {a.events} events in the streaming-at-scale layout "
              f"({os.path.getsize(data) / a.events:.0f} bytes/event), 2,000 devices, "
              f"tumbling 1m + sliding 5m/1m, dedupe by eventId; {a.runs} runs each, median")
        print(f"  machine: {machine()}; DuckDB {duckdb.__version__}")
        med = {}
        for name, rs in results.items():
            wall = statistics.median(r[0] for r in rs)
            cpu = statistics.median(r[1] for r in rs)
            rss = max(r[2] for r in rs)
            med[name] = wall
            print(f"  {name:<9} {a.events / wall:>12,.0f} events/s  {cpu / (a.events / 1e6):6.2f} "
                  f"CPU-s/M  peak RSS {rss:5.0f} MiB  wall {wall:.2f} s  ({rows[name]} window rows)")
        print(f"  eventide / duckdb: {med['duckdb'] / med['eventide']:.2f}x")
        if rows["eventide"] != rows["duckdb"]:
            print("  note: the window row counts differ")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
