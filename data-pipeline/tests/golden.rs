//! Golden tests: the hand-checked rules intake publishes to exactly the expected bytes.

mod common;

use common::*;
use nca_pipeline::publish::{self, Target};
use nca_pipeline::store::{Store, layout};

fn expected(name: &str) -> Vec<u8> {
    std::fs::read(rules_fixture().join("expected").join(name)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_intake_publishes_the_expected_downloads() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
    let p = publish(&store, &rules_fixture())
        .await
        .expect("clean intake publishes");
    assert_eq!(
        p.counts["result_rows"], 12,
        "13 pupils, one unregistered for everything"
    );

    let school = publish::export(&store, &Target::School("9992001".into()), false)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&school),
        String::from_utf8_lossy(&expected("school-9992001.csv"))
    );
    let la = publish::export(&store, &Target::La("999".into()), false)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&la),
        String::from_utf8_lossy(&expected("la-999.csv"))
    );
    let trust = publish::export(&store, &Target::Trust("12345".into()), false)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&trust),
        String::from_utf8_lossy(&expected("trust-12345.csv"))
    );
    let ctf = publish::export(&store, &Target::School("9992002".into()), true)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ctf),
        String::from_utf8_lossy(&expected("school-9992002.ctf.xml"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn release_holds_every_object_the_manifest_lists_with_matching_hashes() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
    let p = publish(&store, &rules_fixture()).await.unwrap();
    let m = store.manifest(&p.id).await.unwrap();
    assert_eq!(m.opens_at, OPENS);
    assert_eq!(m.ks3_opens_at, KS3_OPENS);
    assert_eq!(m.cycle_year, 2024);
    for name in [
        layout::RESULTS,
        layout::UPN_INDEX,
        layout::SCRIPTS_INDEX,
        layout::SUMMARIES,
        layout::ORGANISATIONS,
        layout::CHANGES,
        "school/9992001.csv",
        "school/9992001.csv.gz",
        "school/9992001.csv.br",
        "school/9992001.ctf.xml",
        "school/9992001.qla.csv",
        "la/999.csv.br",
        "trust/12345.csv.gz",
    ] {
        assert!(m.objects.contains_key(name), "manifest lacks {name}");
    }
    let mut listed = store.list_release(&p.id).await.unwrap();
    listed.retain(|n| n != layout::MANIFEST);
    listed.sort();
    assert_eq!(
        listed,
        m.objects.keys().cloned().collect::<Vec<_>>(),
        "the manifest lists exactly the release's objects"
    );
    for (name, entry) in &m.objects {
        let b = store.get_release_object(&p.id, name).await.unwrap();
        assert_eq!(b.len() as u64, entry.size, "{name}");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&b)),
            entry.sha256,
            "{name}"
        );
    }
    // The compressed variants decompress to the CSV itself.
    let csv = store
        .get_release_object(&p.id, "school/9992001.csv")
        .await
        .unwrap();
    let gz = store
        .get_release_object(&p.id, "school/9992001.csv.gz")
        .await
        .unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
    assert_eq!(out, csv);
    let br = store
        .get_release_object(&p.id, "school/9992001.csv.br")
        .await
        .unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut brotli::Decompressor::new(&br[..], 4096), &mut out).unwrap();
    assert_eq!(out, csv);
}

#[tokio::test(flavor = "multi_thread")]
async fn summaries_and_question_level_analysis_follow_the_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().to_str().unwrap()).unwrap();
    let p = publish(&store, &rules_fixture()).await.unwrap();
    let s: serde_json::Value = serde_json::from_slice(
        &store
            .get_release_object(&p.id, layout::SUMMARIES)
            .await
            .unwrap(),
    )
    .unwrap();
    let school = &s["schools"]["9992001"];
    // Reading in 9992001: counted = AS or NS: Ann, Ben, Dan, Fay(B), Gus(Q), Hal(A), Joe, Kit(N) = 8; met 4.
    assert_eq!(school["reading"]["counted"], 8);
    assert_eq!(school["reading"]["met"], 4);
    assert_eq!(school["reading"]["pct_met"], 50.0);
    assert_eq!(school["pupils"], 11);
    assert_eq!(s["national"]["pupils"], 12);
    assert_eq!(s["las"]["999"]["pupils"], 12);
    assert_eq!(s["trusts"]["12345"]["pupils"], 1);
    let qla = String::from_utf8(
        store
            .get_release_object(&p.id, "school/9992002.qla.csv")
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let reading = qla.lines().find(|l| l.starts_with("reading,")).unwrap();
    // One pupil with 27/50 in the school; national mean over 9 marked readers.
    assert!(reading.starts_with("reading,1,50,1,27.00,"), "{reading}");
}

#[test]
fn generated_intake_is_clean_deterministic_and_covers_every_rule() {
    use nca_pipeline::generate::{GenOptions, generate};
    let tmp = tempfile::tempdir().unwrap();
    let opts = |out: &std::path::Path| GenOptions {
        out: out.to_path_buf(),
        schools: 12,
        seed: 7,
        year: 2025,
        script_pupils: 1,
        progress: false,
    };
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let sa = generate(&opts(&a)).unwrap();
    generate(&opts(&b)).unwrap();
    assert_eq!(snapshot(&a), snapshot(&b), "same seed, same bytes");
    assert!(sa.script_pages > 0);
    let rep = nca_pipeline::report::Reporter::in_memory();
    let intake = nca_pipeline::validate::load(&a, None, &rep, None);
    assert_eq!(
        rep.problems(),
        vec![],
        "the generator writes a clean intake"
    );
    assert_eq!(intake.year, 2025);
    // Every result code and every rule appears among the generated results.
    let rows = nca_pipeline::publish::compute(&intake, None);
    let results: std::collections::HashSet<String> = rows
        .iter()
        .flatten()
        .flat_map(|r| {
            r.result
                .subjects
                .iter()
                .map(|s| s.result_text().into_owned())
        })
        .collect();
    for code in [
        "", "L", "F", "P", "B", "H", "Q", "A", "U", "J", "M", "N", "100", "110", "120",
    ] {
        assert!(results.contains(code), "no generated result {code:?}");
    }
    let unregistered = intake
        .pupils
        .iter()
        .filter(|p| {
            p.reg
                .iter()
                .all(|r| *r == nca_pipeline::domain::RegStatus::Unregistered)
        })
        .count();
    assert!(unregistered > 0);
    assert_eq!(
        rows.iter().map(Vec::len).sum::<usize>(),
        intake.pupils.len() - unregistered
    );
}
