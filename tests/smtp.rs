//! Email goes out over real SMTP when configured: lettre against aiosmtpd (PyPI), which
//! scripts/test-all installs, printing each message it receives.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn smtp_delivers_when_configured() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sink = Command::new("python3")
        .args([
            "-u",
            "-m",
            "aiosmtpd",
            "-n",
            "-c",
            "aiosmtpd.handlers.Debugging",
            "-l",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with aiosmtpd is needed: scripts/test-all installs it");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "aiosmtpd did not start: pip install aiosmtpd"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mailer = nca_portal::email::Mailer::smtp(
        &format!("smtp://127.0.0.1:{port}"),
        "",
        "NCA Portal <no-reply@nca.invalid>",
    )
    .unwrap();
    mailer
        .send(
            "jo.smith+mod@school.sch.uk",
            "Your NCA Portal verification code",
            "Your verification code is 424242\n",
        )
        .await
        .unwrap();
    let out = sink.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) => {
                seen.push_str(&l);
                seen.push('\n');
                if l.contains("424242") {
                    break;
                }
            }
            _ => break,
        }
    }
    let _ = sink.kill();
    let _ = sink.wait();
    assert!(seen.contains("424242"), "{seen}");
    assert!(
        seen.contains("jo.smith@school.sch.uk"),
        "delivered to the official address: {seen}"
    );
    assert!(
        seen.contains("Subject: Your NCA Portal verification code"),
        "{seen}"
    );
}
