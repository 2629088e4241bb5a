//! Outgoing email: lettre over SMTP when configured, otherwise one `.eml` file per message in
//! the outbox folder (local users, tests and load tests read codes and links there).
//! Message bodies hold codes and links, so they are never logged.

use std::path::PathBuf;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[derive(Clone)]
enum Transport {
    Outbox(AsyncFileTransport<Tokio1Executor>),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

/// Sends email; cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    transport: Transport,
    outbox: Option<PathBuf>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("outbox", &self.outbox)
            .finish()
    }
}

impl Mailer {
    pub fn outbox(dir: PathBuf, from: &str) -> anyhow::Result<Mailer> {
        std::fs::create_dir_all(&dir)?;
        Ok(Mailer {
            from: from.parse()?,
            transport: Transport::Outbox(AsyncFileTransport::new(&dir)),
            outbox: Some(dir),
        })
    }

    /// SMTP from a URL (`smtps://user@host:465`, `smtp://host:25?tls=required`); the password
    /// comes separately so that it can live in a secret file.
    pub fn smtp(url: &str, password: &str, from: &str) -> anyhow::Result<Mailer> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?;
        let parsed = url::Url::parse(url)?;
        if !parsed.username().is_empty() {
            builder = builder.credentials(Credentials::new(
                parsed.username().to_string(),
                password.to_string(),
            ));
        }
        Ok(Mailer {
            from: from.parse()?,
            transport: Transport::Smtp(builder.build()),
            outbox: None,
        })
    }

    pub fn outbox_dir(&self) -> Option<&PathBuf> {
        self.outbox.as_ref()
    }

    /// Send one plain-text email. Addresses with `+mod` before the @ are delivered to the
    /// official address they are linked to (seed 002: both accounts share one mailbox).
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> anyhow::Result<()> {
        let to: Mailbox = delivery_address(to).parse()?;
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_string())?;
        match &self.transport {
            Transport::Outbox(t) => {
                t.send(msg).await?;
            }
            Transport::Smtp(t) => {
                t.send(msg).await?;
            }
        }
        metrics::counter!("nca_emails_sent_total").increment(1);
        Ok(())
    }
}

/// The mailbox an account's email goes to: `jo+mod@x` is delivered to `jo@x`.
pub fn delivery_address(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) if local.ends_with("+mod") => {
            format!("{}@{domain}", &local[..local.len() - 4])
        }
        _ => email.to_string(),
    }
}

/// Read the newest outbox message to `to` (tests and local tooling): (subject, body).
pub fn latest_in_outbox(dir: &std::path::Path, to: &str) -> Option<(String, String)> {
    let mut newest: Option<(std::time::SystemTime, String)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).ok()?;
        let addressed = text
            .lines()
            .take_while(|l| !l.is_empty())
            .any(|l| l.to_ascii_lowercase().starts_with("to:") && l.contains(to));
        if !addressed {
            continue;
        }
        let at = e.metadata().ok()?.modified().ok()?;
        if newest.as_ref().is_none_or(|(t, _)| at >= *t) {
            newest = Some((at, text));
        }
    }
    let text = newest?.1;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))?;
    let subject = head
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_string();
    Some((subject, body.replace("\r\n", "\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_mod_is_delivered_to_the_official_address() {
        assert_eq!(
            delivery_address("jo.smith+mod@school.sch.uk"),
            "jo.smith@school.sch.uk"
        );
        assert_eq!(
            delivery_address("jo.smith@school.sch.uk"),
            "jo.smith@school.sch.uk"
        );
        assert_eq!(delivery_address("jo+other@x.uk"), "jo+other@x.uk");
    }

    #[tokio::test]
    async fn the_outbox_holds_one_eml_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mailer::outbox(
            dir.path().to_path_buf(),
            "NCA Portal <no-reply@nca.invalid>",
        )
        .unwrap();
        m.send("jo+mod@school.sch.uk", "Your code", "Your code is 123456")
            .await
            .unwrap();
        let (subject, body) = latest_in_outbox(dir.path(), "jo@school.sch.uk").unwrap();
        assert_eq!(subject, "Your code");
        assert!(body.contains("123456"), "{body}");
        assert!(latest_in_outbox(dir.path(), "someone@else.uk").is_none());
    }
}
