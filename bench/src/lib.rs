//! Benchmarks live in `benches/` (criterion, inner steps) and in scripts beside this crate
//! (`national.sh`: the end-to-end national publish against DuckDB).
