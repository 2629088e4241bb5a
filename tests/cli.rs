//! The real binary's `users import`: every row checked before any account is created, errors
//! naming the file, row and column; good files create every account.

use std::path::Path;
use std::process::Command;

fn nca(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nca-portal"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn users_import_checks_every_row_first_then_creates_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("data-pipeline/tests/fixtures/rules");
    let out = nca(&data, &["orgs", "import", fixture.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "email,org,role,password\n\
         a@a.sch.uk,9992001,general-user,Tr0ubadour&Bells-42\n\
         b@a.sch.uk,9992001,head-gardener,Tr0ubadour&Bells-42\n",
    )
    .unwrap();
    let out = nca(&data, &["users", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv, row 3, column role") && err.contains("head-gardener"),
        "{err}"
    );
    let list = nca(&data, &["users", "list", "--org", "9992001"]);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains("a@a.sch.uk"),
        "nothing created from a file with a bad row"
    );

    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        "email,org,role,password\n\
         a@a.sch.uk,9992001,general-user;account-manager,Tr0ubadour&Bells-42\n\
         la@la.gov.uk,999,la-general-user,Tr0ubadour&Bells-42\n\
         new@a.sch.uk,9992001,general-user,\n",
    )
    .unwrap();
    let out = nca(&data, &["users", "import", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 users imported"));
    let list = String::from_utf8_lossy(&nca(&data, &["users", "list", "--org", "9992001"]).stdout)
        .to_string();
    assert!(
        list.contains("a@a.sch.uk") && list.contains("account-manager"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("new@a.sch.uk") && l.ends_with("invited")),
        "{list}"
    );
}
