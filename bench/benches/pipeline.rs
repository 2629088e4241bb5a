//! Inner steps of a publish, on a generated intake of 100 schools (about 4,000 pupils and
//! 750,000 mark rows): mark aggregation (streaming validation of the marks), the result
//! rules with conversion, and writing the results CSVs with their compressed variants.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nca_pipeline::generate::{GenOptions, generate};
use nca_pipeline::{outputs, publish, report::Reporter, validate};

fn benches(c: &mut Criterion) {
    let dir = tempfile_dir();
    generate(&GenOptions {
        out: dir.clone(),
        schools: 100,
        seed: 1,
        year: 2025,
        script_pupils: 0,
        progress: false,
    })
    .unwrap();
    let rep = Reporter::in_memory();
    let intake = validate::load(&dir, None, &rep, None);
    assert_eq!(rep.count(), 0);

    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Elements(intake.marks.rows));
    g.bench_function("mark_aggregation (validate + aggregate marks, rows)", |b| {
        b.iter(|| {
            let rep = Reporter::in_memory();
            black_box(validate::load(&dir, None, &rep, None).marks.rows)
        })
    });
    g.throughput(Throughput::Elements(intake.pupils.len() as u64));
    g.bench_function("rules_and_conversion (pupils)", |b| {
        b.iter(|| black_box(publish::compute(&intake, None).len()))
    });
    let rows = publish::compute(&intake, None);
    let bytes: u64 = rows
        .iter()
        .map(|r| outputs::school_csv(r).len() as u64)
        .sum();
    g.throughput(Throughput::Bytes(bytes));
    // Writing alone, then writing with each precompressed variant.
    type Step = fn(Vec<u8>) -> Vec<u8>;
    let steps: [(&str, Step); 3] = [
        ("csv_writing (school CSVs, bytes)", |csv| csv),
        ("csv_gzip (bytes of CSV)", |csv| outputs::gzip(&csv)),
        ("csv_brotli (bytes of CSV)", |csv| outputs::brotli(&csv)),
    ];
    for (name, step) in steps {
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    rows.iter()
                        .map(|r| step(outputs::school_csv(r)).len())
                        .sum::<usize>(),
                )
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("nca-bench-{}", std::process::id()))
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
