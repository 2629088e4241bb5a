#!/usr/bin/env python3
"""National publish: our pipeline against DuckDB on the same intake, in one run.

What it measures
  ours    `nca-pipeline publish INTAKE --store WORK/store ...`: the whole release (validate,
          apply the result rules, write every school/LA/trust file, CTF, QLA, indexes) into a
          fresh store. Wall time is measured around the child process; peak memory is the
          child's maximum resident set size from `/usr/bin/time -f '%e %M'`.
  duckdb  The same results with DuckDB (Python package, default settings, all threads):
          raw totals per pupil and paper from `marks`, the contract's rules 1-6 (section 2)
          for reading, GPS and maths, conversion through `conversion`, the `_met`/`_high`/
          `rwm_met` columns of section 4, TA from `ta`, and one CSV per school
          (`COPY ... PARTITION_BY (laestab), ORDER_BY (surname, forename, upn)`; an ORDER BY
          in the query is not kept by partitioned writes, duckdb issue #14349, so this needs a
          DuckDB whose COPY has the ORDER_BY option, e.g. 2.0).
          It runs in a child process (`national.py --duckdb-only ...`) under the same
          `/usr/bin/time`, so peak memory is measured the same way. Its wall time is taken
          inside the child from `duckdb.connect()` to the last file written (interpreter
          start and `import duckdb` are left out, which favours DuckDB); the child's whole
          process wall time is shown too.
  DuckDB does only the results CSVs; ours does the whole release, so the comparison is
  conservative for ours.

How to read it
  The table gives wall seconds and peak MiB for each, and "ours is X.XX times faster"
  (= duckdb wall / our wall; below 1.00 means DuckDB was faster). Targets checked:
  our wall < 60 s, our peak < 4096 MiB, ours faster than DuckDB. The same figures go to
  WORK/national-figures.json. Then a correctness cross-check: for up to 50 schools (every
  Nth by laestab among the schools DuckDB wrote) the sets of
  (upn, reading_result, gps_result, maths_result, rwm_met) from both outputs must be equal,
  the total number of result rows must agree, and both sides' files in the sample must be
  in the contract's row order (surname, forename, upn). Exit status: non-zero if publish or the
  DuckDB run fails, 1 on any cross-check mismatch, else 0 (a missed target does not fail).

Usage
  python3 bench/national.py --bin BIN --intake INTAKE_DIR --work WORK_DIR
  (bench/national.sh builds the release binary and generates a national intake first.)
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

OPENS_AT = "2025-07-08T07:30:00+01:00"
KS3_OPENS_AT = "2025-07-09T07:30:00+01:00"

TARGET_WALL_S = 60.0
TARGET_PEAK_MIB = 4096.0

# Contract section 1: subjects and their papers, in paper order (rule 4 takes the first
# paper's code), and the maximum raw score.
SUBJECTS = [
    ("reading", ["reading"], 50),
    ("gps", ["gps1", "gps2"], 70),
    ("maths", ["maths1", "maths2", "maths3"], 110),
]
PAPERS = [p for _, ps, _ in SUBJECTS for p in ps]

# Contract section 4.
HEADER = (
    "upn,surname,forename,dob,gender,reading_raw,reading_result,reading_met,reading_high,"
    "gps_raw,gps_result,gps_met,gps_high,maths_raw,maths_result,maths_met,maths_high,"
    "writing_ta,science_ta,rwm_met"
).split(",")

# Columns each intake table must provide, with the type DuckDB should read them as.
TABLES = {
    "pupils": [("upn", "VARCHAR"), ("laestab", "VARCHAR"), ("surname", "VARCHAR"),
               ("forename", "VARCHAR"), ("dob", "VARCHAR"), ("gender", "VARCHAR"),
               ("reading_reg", "VARCHAR"), ("gps_reg", "VARCHAR"), ("maths_reg", "VARCHAR")],
    "marks": [("upn", "VARCHAR"), ("paper", "VARCHAR"), ("item", "VARCHAR"), ("mark", "INTEGER")],
    "attendance": [("upn", "VARCHAR"), ("paper", "VARCHAR"), ("code", "VARCHAR")],
    "annulments": [("upn", "VARCHAR"), ("subject", "VARCHAR"), ("code", "VARCHAR")],
    "conversion": [("year", "VARCHAR"), ("subject", "VARCHAR"), ("raw_score", "INTEGER"),
                   ("scaled_score", "VARCHAR")],
    "ta": [("upn", "VARCHAR"), ("writing", "VARCHAR"), ("science", "VARCHAR")],
}
OPTIONAL = {"attendance", "annulments", "ta"}


def sql_str(s):
    return "'" + str(s).replace("'", "''") + "'"


def table_sql(intake, name):
    """A FROM-clause expression for an intake table: `<name>.csv` or `<name>.parquet`,
    or an empty relation when an optional table is absent."""
    cols = TABLES[name]
    csv_path = os.path.join(intake, name + ".csv")
    pq_path = os.path.join(intake, name + ".parquet")
    if os.path.isfile(csv_path):
        spec = "{" + ", ".join(f"{sql_str(c)}: {sql_str(t)}" for c, t in cols) + "}"
        return (f"read_csv({sql_str(csv_path)}, header = true, delim = ',', quote = '\"', "
                f"escape = '\"', columns = {spec})")
    if os.path.isfile(pq_path):
        sel = ", ".join(f"CAST({c} AS {t}) AS {c}" for c, t in cols)
        return f"(SELECT {sel} FROM read_parquet({sql_str(pq_path)}))"
    if name in OPTIONAL:
        sel = ", ".join(f"NULL::{t} AS {c}" for c, t in cols)
        return f"(SELECT {sel} WHERE false)"
    sys.exit(f"intake {intake} has neither {name}.csv nor {name}.parquet")


def results_query(intake):
    """One SELECT giving laestab plus the section-4 columns for every pupil with a row."""
    t = {name: table_sql(intake, name) for name in TABLES}

    # Per pupil: raw total per paper (NULL when the paper has no marks at all).
    paper_totals = ",\n      ".join(
        f"max(raw) FILTER (WHERE paper = '{p}') AS {p}_raw" for p in PAPERS)
    att_cols = ",\n      ".join(
        f"min(code) FILTER (WHERE paper = '{p}') AS {p}_att" for p in PAPERS)
    ann_cols = ",\n      ".join(
        f"min(code) FILTER (WHERE subject = '{s}') AS {s}_ann" for s, _, _ in SUBJECTS)

    # Rules 1-6 per subject: a "kind" (NULL = no result, a letter, or 'S' = scored under
    # rule 6) and the raw score over the papers sat.
    kinds, raws = [], []
    for s, ps, _ in SUBJECTS:
        all_coded = " AND ".join(f"{p}_att IS NOT NULL" for p in ps)
        unmarked = " OR ".join(f"({p}_att IS NULL AND {p}_raw IS NULL)" for p in ps)
        kinds.append(f"""CASE
        WHEN {s}_reg = 'unregistered' THEN NULL
        WHEN {s}_reg = 'left' THEN 'L'
        WHEN {s}_reg = 'future' THEN 'F'
        WHEN {s}_reg = 'previous' THEN 'P'
        WHEN {s}_reg = 'below' THEN 'B'
        WHEN {s}_ann IS NOT NULL THEN {s}_ann
        WHEN {all_coded} THEN {ps[0]}_att
        WHEN {unmarked} THEN 'M'
        ELSE 'S' END AS {s}_kind""")
        raws.append("(" + " + ".join(
            f"CASE WHEN {p}_att IS NULL THEN coalesce({p}_raw, 0) ELSE 0 END" for p in ps)
            + f") AS {s}_sum")

    conv_joins, result_cols = [], []
    for s, _, mx in SUBJECTS:
        conv_joins.append(
            f"LEFT JOIN conv AS c_{s} ON c_{s}.subject = '{s}' "
            f"AND c_{s}.raw_score = least(k.{s}_sum, {mx}) AND k.{s}_kind = 'S'")
        result_cols.append(f"""CASE WHEN k.{s}_kind = 'S' THEN k.{s}_sum END AS {s}_raw,
      CASE WHEN k.{s}_kind = 'S' THEN c_{s}.scaled_score ELSE k.{s}_kind END AS {s}_result""")

    out_cols = []
    for s, _, _ in SUBJECTS:
        out_cols.append(f"""{s}_raw, {s}_result,
    CASE WHEN {s}_result IS NULL OR {s}_result IN ('L', 'M', 'F', 'P') THEN NULL
         WHEN try_cast({s}_result AS INTEGER) >= 100 THEN 'AS' ELSE 'NS' END AS {s}_met,
    CASE WHEN try_cast({s}_result AS INTEGER) >= 110 THEN 'Y'
         WHEN try_cast({s}_result AS INTEGER) IS NOT NULL THEN 'N' END AS {s}_high""")

    return f"""
WITH
  totals AS (
    SELECT upn, paper, sum(mark) AS raw
    FROM {t['marks']}
    GROUP BY upn, paper),
  marks_pp AS (
    SELECT upn,
      {paper_totals}
    FROM totals GROUP BY upn),
  att_pp AS (
    SELECT upn,
      {att_cols}
    FROM {t['attendance']} GROUP BY upn),
  ann_pp AS (
    SELECT upn,
      {ann_cols}
    FROM {t['annulments']} GROUP BY upn),
  ta AS (
    SELECT upn, min(writing) AS writing, min(science) AS science
    FROM {t['ta']} GROUP BY upn),
  conv AS (
    SELECT subject, raw_score, scaled_score FROM {t['conversion']}
    WHERE year = (SELECT max(year) FROM {t['conversion']})),
  pupils AS (
    SELECT * FROM {t['pupils']}
    WHERE NOT (reading_reg = 'unregistered' AND gps_reg = 'unregistered'
               AND maths_reg = 'unregistered')),
  k AS (
    SELECT p.upn, p.laestab, p.surname, p.forename, p.dob, p.gender,
      {(',' + chr(10) + '      ').join(kinds)},
      {(',' + chr(10) + '      ').join(raws)}
    FROM pupils p
    LEFT JOIN marks_pp USING (upn)
    LEFT JOIN att_pp USING (upn)
    LEFT JOIN ann_pp USING (upn)),
  r AS (
    SELECT k.upn, k.laestab, k.surname, k.forename, k.dob, k.gender,
      {(',' + chr(10) + '      ').join(result_cols)},
      ta.writing AS writing_ta, ta.science AS science_ta
    FROM k
    {(chr(10) + '    ').join(conv_joins)}
    LEFT JOIN ta USING (upn))
SELECT laestab, upn, surname, forename, dob, gender,
    {(',' + chr(10) + '    ').join(out_cols)},
    writing_ta, science_ta,
    CASE WHEN reading_result IS NULL OR reading_result IN ('L', 'M', 'F', 'P')
           OR maths_result IS NULL OR maths_result IN ('L', 'M', 'F', 'P') THEN NULL
         WHEN try_cast(reading_result AS INTEGER) >= 100
           AND try_cast(maths_result AS INTEGER) >= 100
           AND writing_ta IN ('EXS', 'GDS') THEN 'Y'
         ELSE 'N' END AS rwm_met
FROM r
"""


def duckdb_only(args):
    """The DuckDB side, run as a child process so its peak RSS can be measured."""
    import duckdb

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    query = results_query(args.intake)
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET temp_directory = {sql_str(out + '.tmp')}")
    rows = con.execute(
        f"COPY ({query}) TO {sql_str(out)} "
        "(FORMAT CSV, HEADER, PARTITION_BY (laestab), ORDER_BY (surname, forename, upn), "
        "OVERWRITE_OR_IGNORE)").fetchone()[0]
    con.close()
    wall = time.perf_counter() - t0
    shutil.rmtree(out + ".tmp", ignore_errors=True)
    with open(args.timing, "w") as f:
        json.dump({"wall_s": wall, "rows": rows, "duckdb_version": duckdb.__version__}, f)


def timed(cmd, label):
    """Run cmd under /usr/bin/time; return (perf_counter wall s, /usr/bin/time wall s,
    peak RSS MiB, completed process). Exits non-zero if the command fails."""
    fd, tfile = tempfile.mkstemp(prefix="nca-time-")
    os.close(fd)
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", tfile] + cmd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        with open(tfile) as f:
            last = f.read().strip().splitlines()[-1]
    finally:
        os.unlink(tfile)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        print(f"{label} failed (exit {proc.returncode}): {' '.join(cmd)}", file=sys.stderr)
        sys.exit(proc.returncode or 1)
    elapsed, maxrss_kib = last.split()
    return wall, float(elapsed), int(maxrss_kib) / 1024.0, proc


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def in_order(rows):
    k = [(r["surname"], r["forename"], r["upn"]) for r in rows]
    return k == sorted(k)


def key(row):
    return (row["upn"], row["reading_result"], row["gps_result"], row["maths_result"],
            row["rwm_met"])


def cross_check(work, duck_out, our_rows_total, duck_rows_total):
    with open(os.path.join(work, "store", "CURRENT")) as f:
        release = f.read().strip()
    ours_dir = os.path.join(work, "store", "releases", release, "school")
    parts = sorted(d.split("=", 1)[1] for d in os.listdir(duck_out) if d.startswith("laestab="))
    step = max(1, len(parts) // 50)
    sample = parts[::step][:50]
    mismatches = []
    header_ok = True
    unsorted = {"ours": 0, "duckdb": 0}
    for laestab in sample:
        pdir = os.path.join(duck_out, f"laestab={laestab}")
        duck = set()
        for name in sorted(os.listdir(pdir)):
            if name.endswith(".csv"):
                rows = read_rows(os.path.join(pdir, name))
                unsorted["duckdb"] += not in_order(rows)
                duck |= {key(r) for r in rows}
        ours_path = os.path.join(ours_dir, f"{laestab}.csv")
        ours = set()
        if os.path.isfile(ours_path):
            with open(ours_path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, [])
                if header != HEADER:
                    header_ok = False
                rows = [dict(zip(header, rec)) for rec in reader]
                unsorted["ours"] += not in_order(rows)
                ours = {key(r) for r in rows}
        for row in sorted(ours - duck):
            mismatches.append((laestab, "only in ours", row))
        for row in sorted(duck - ours):
            mismatches.append((laestab, "only in duckdb", row))
    print(f"\ncross-check: {len(sample)} of {len(parts)} schools compared "
          f"(every {step}th by laestab), {len(mismatches)} mismatching rows")
    for laestab, side, row in mismatches[:5]:
        print(f"  {laestab} {side}: upn={row[0]} reading={row[1]!r} gps={row[2]!r} "
              f"maths={row[3]!r} rwm={row[4]!r}")
    ok = not mismatches
    if unsorted["ours"] or unsorted["duckdb"]:
        print(f"  files not sorted by surname, forename, upn: ours {unsorted['ours']}, "
              f"duckdb {unsorted['duckdb']}")
        ok = False
    if not header_ok:
        print("  our school CSV header differs from the contract's section 4")
        ok = False
    if our_rows_total is not None:
        same = our_rows_total == duck_rows_total
        print(f"result rows: ours {our_rows_total}, duckdb {duck_rows_total}"
              f"{'' if same else '  MISMATCH'}")
        ok = ok and same
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", help="nca-pipeline binary")
    ap.add_argument("--intake", required=True)
    ap.add_argument("--work", help="work directory (store, report, duckdb-out, figures)")
    ap.add_argument("--duckdb-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--timing", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.duckdb_only:
        return duckdb_only(args)
    if not args.bin or not args.work:
        ap.error("--bin and --work are required")

    intake = os.path.abspath(args.intake)
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    store = os.path.join(work, "store")
    duck_out = os.path.join(work, "duckdb-out")

    # a) ours
    shutil.rmtree(store, ignore_errors=True)
    cmd = [args.bin, "publish", intake, "--store", store, "--opens-at", OPENS_AT,
           "--ks3-opens-at", KS3_OPENS_AT, "--report", os.path.join(work, "report")]
    print("ours:   " + " ".join(cmd), flush=True)
    our_wall, _, our_peak, proc = timed(cmd, "publish")
    our_rows = None
    for line in proc.stdout.splitlines():
        print("        " + line)
        if line.strip().startswith("result_rows:"):
            our_rows = int(line.split(":", 1)[1])

    # b) DuckDB, in a child process under the same /usr/bin/time
    timing = os.path.join(work, "duckdb-timing.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--duckdb-only", "--intake", intake,
           "--out", duck_out, "--timing", timing]
    print("duckdb: " + " ".join(cmd), flush=True)
    duck_proc_wall, _, duck_peak, _ = timed(cmd, "duckdb")
    with open(timing) as f:
        dt = json.load(f)
    duck_wall = dt["wall_s"]

    # c) figures
    ratio = duck_wall / our_wall
    print()
    print(f"{'':8} {'wall s':>9} {'peak MiB':>10}")
    print(f"{'ours':8} {our_wall:9.2f} {our_peak:10.1f}")
    print(f"{'duckdb':8} {duck_wall:9.2f} {duck_peak:10.1f}   "
          f"(duckdb {dt['duckdb_version']}, connect to last file; "
          f"whole child process {duck_proc_wall:.2f} s)")
    print(f"ours is {ratio:.2f} times faster (duckdb wall / our wall)")
    targets = {
        "our_wall_under_60s": our_wall < TARGET_WALL_S,
        "our_peak_under_4096mib": our_peak < TARGET_PEAK_MIB,
        "ours_faster_than_duckdb": our_wall < duck_wall,
    }
    print("targets:")
    print(f"  our wall < {TARGET_WALL_S:.0f} s:      {'yes' if targets['our_wall_under_60s'] else 'NO'}")
    print(f"  our peak < {TARGET_PEAK_MIB:.0f} MiB:  {'yes' if targets['our_peak_under_4096mib'] else 'NO'}")
    print(f"  ours faster than duckdb: {'yes' if targets['ours_faster_than_duckdb'] else 'NO'}")
    figures = {
        "intake": intake,
        "result_rows": {"ours": our_rows, "duckdb": dt["rows"]},
        "ours": {"wall_s": round(our_wall, 3), "peak_mib": round(our_peak, 1)},
        "duckdb": {"wall_s": round(duck_wall, 3), "peak_mib": round(duck_peak, 1),
                   "process_wall_s": round(duck_proc_wall, 3),
                   "version": dt["duckdb_version"]},
        "ours_times_faster": round(ratio, 3),
        "targets": targets,
    }
    fig_path = os.path.join(work, "national-figures.json")
    with open(fig_path, "w") as f:
        json.dump(figures, f, indent=2)
        f.write("\n")
    print(f"figures written to {fig_path}")

    # d) correctness
    if not cross_check(work, duck_out, our_rows, dt["rows"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
