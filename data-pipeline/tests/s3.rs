//! The real binary publishes to, exports from and rolls back in a real S3-compatible server
//! (moto's, from PyPI `moto[server]`, which scripts/test-all installs), configured only by the
//! standard `AWS_*` variables, as an operator would.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn start_moto() -> (Moto, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with moto[server] is needed: scripts/test-all installs it");
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto did not start on port {port}: pip install 'moto[server]'"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (moto, port)
}

fn pipeline(port: u16, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nca-pipeline"))
        .args(args)
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap()
}

#[test]
fn publish_export_and_rollback_against_a_real_s3_server() {
    let (_moto, port) = start_moto();
    let created = http(
        port,
        "PUT /results HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(created.starts_with("HTTP/1.1 200"), "{created}");
    let dir = common::rules_fixture();
    let store = "s3://results/ks2/2024";
    let publish = |extra: &[&str]| {
        let mut args = vec![
            "publish",
            dir.to_str().unwrap(),
            "--store",
            store,
            "--opens-at",
            "2024-07-09T07:30:00+01:00",
            "--ks3-opens-at",
            "2024-07-10T07:30:00+01:00",
        ];
        args.extend_from_slice(extra);
        let out = pipeline(port, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    publish(&[]);
    let out = pipeline(port, &["export", "--store", store, "--laestab", "9992001"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read(dir.join("expected/school-9992001.csv")).unwrap();
    assert_eq!(
        out.stdout, expected,
        "S3 export is byte-identical to the golden file"
    );
    let out = pipeline(port, &["export", "--store", store, "--la", "999"]);
    assert_eq!(
        out.stdout,
        std::fs::read(dir.join("expected/la-999.csv")).unwrap()
    );

    // A second release, then rollback to the first, all through the bucket.
    std::thread::sleep(Duration::from_millis(1100));
    publish(&[]);
    let out = pipeline(port, &["releases", "--store", store]);
    let listing = String::from_utf8(out.stdout).unwrap();
    let ids: Vec<&str> = listing
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.len() > 15 && w.contains('T'))
        })
        .collect();
    assert_eq!(ids.len(), 2, "{listing}");
    let out = pipeline(port, &["rollback", "--store", store, "--to", ids[0]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing =
        String::from_utf8(pipeline(port, &["releases", "--store", store]).stdout).unwrap();
    let current = listing
        .lines()
        .find(|l| l.contains("current"))
        .unwrap_or("");
    assert!(current.contains(ids[0]), "{listing}");

    // A bucket that does not exist is an error naming the store, not a panic.
    let out = pipeline(
        port,
        &[
            "export",
            "--store",
            "s3://no-such-bucket/x",
            "--laestab",
            "9992001",
        ],
    );
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}
