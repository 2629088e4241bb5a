//! Passwords: the seeds' policy, and argon2id hashing on its own pool, bounded below the core
//! count and run at the lowest scheduling priority, so that a sign-in rush can never take
//! every core from requests already signed in, nor delay them while it runs.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Why a new password is refused; each message says what to do.
pub fn policy_problems(password: &str, email: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if password.chars().count() < 8 {
        out.push("Password must be at least 8 characters long");
    }
    if !password.chars().any(|c| c.is_uppercase()) {
        out.push("Password must contain an uppercase letter");
    }
    if !password.chars().any(|c| c.is_lowercase()) {
        out.push("Password must contain a lowercase letter");
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        out.push("Password must contain a number");
    }
    if !password
        .chars()
        .any(|c| !c.is_alphanumeric() && !c.is_whitespace())
    {
        out.push("Password must contain a special character, such as ?, !, & or £");
    }
    if password.chars().count() > 256 {
        out.push("Password must be 256 characters or fewer");
    } else if out.is_empty() {
        // Common passwords, keyboard patterns and the user's own address: zxcvbn's
        // dictionaries hold the frequent-password lists, so no list is kept here.
        let local = email.split('@').next().unwrap_or("");
        let weak = zxcvbn::zxcvbn(password, &[email, local, "nca", "portal", "school"]);
        if (weak.score() as u8) < 3 {
            out.push("Password is too common or easy to guess: choose a less predictable one");
        }
    }
    out
}

/// OWASP's argon2id parameters: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters"),
    )
}

/// Hashes and verifies on its own threads (`nca-hash-N`, at the lowest priority: downloads
/// and pages preempt them), at most `threads` at once.
#[derive(Clone, Debug)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    pool: Arc<rayon::ThreadPool>,
    /// A real hash of a random password, verified for unknown emails so that they take as long.
    dummy: Arc<str>,
}

impl Hasher {
    pub fn new(threads: usize) -> Hasher {
        let dummy = hash_now(&format!("{:x}", rand::random::<u128>()));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("nca-hash-{i}"))
            .start_handler(|_| {
                // Lowering one's own priority needs no privilege; failing leaves it normal.
                if let Err(e) = thread_priority::set_current_thread_priority(
                    thread_priority::ThreadPriority::Min,
                ) {
                    tracing::warn!(error = ?e, "could not lower the hashing threads' priority");
                }
            })
            .build()
            .expect("starting the hashing threads");
        Hasher {
            permits: Arc::new(Semaphore::new(threads.max(1))),
            pool: Arc::new(pool),
            dummy: dummy.into(),
        }
    }

    /// Run `f` on a hashing thread. The place is held by the job itself, so a request that
    /// gives up (a timeout) does not free it while its hash still runs; a panic in `f` fails
    /// this request only (rayon would otherwise abort the process).
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            let _permit = permit;
            if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let _ = tx.send(v);
            }
        });
        rx.await.expect("a hashing job panicked")
    }

    pub async fn hash(&self, password: String) -> String {
        self.run(move || hash_now(&password)).await
    }

    /// Verify against `stored`, or against the dummy hash when there is none, so that the
    /// answer takes the same time either way. Returns false for a missing hash.
    pub async fn verify(&self, password: String, stored: Option<String>) -> bool {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.to_string());
        let ok = self
            .run(move || {
                PasswordHash::new(&hash)
                    .map(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
                    .unwrap_or(false)
            })
            .await;
        ok && known
    }
}

fn hash_now(password: &str) -> String {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16-byte salt");
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job that panics fails its own request, not the process, and gives its place back.
    #[tokio::test]
    async fn a_panicking_hash_job_fails_only_its_request() {
        let hasher = Hasher::new(1);
        let h = hasher.clone();
        let failed = tokio::spawn(async move { h.run(|| -> u8 { panic!("boom") }).await }).await;
        assert!(failed.is_err_and(|e| e.is_panic()));
        // The only place is free again, and the pool still hashes.
        assert_eq!(hasher.run(|| 7u8).await, 7);
        let stored = hasher.hash("Tr0ubadour&Bells".into()).await;
        assert!(hasher.verify("Tr0ubadour&Bells".into(), Some(stored)).await);
    }

    /// The hashing threads' nice value, from /proc (Linux), once one has run.
    #[tokio::test]
    async fn hashing_runs_at_a_lower_priority_than_requests() {
        let hasher = Hasher::new(1);
        let h = hasher.hash("Tr0ubadour&Bells".into()).await;
        assert!(
            hasher
                .verify("Tr0ubadour&Bells".into(), Some(h.clone()))
                .await
        );
        assert!(!hasher.verify("wrong".into(), Some(h)).await);
        let mut nice = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim().starts_with("nca-hash-") {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
                // Field 19 (nice), counted after the ")" that ends the thread's name.
                let after = &stat[stat.rfind(')').unwrap() + 2..];
                let f: Vec<&str> = after.split_whitespace().collect();
                nice.push(f[16].parse::<i32>().unwrap());
            }
        }
        assert!(!nice.is_empty(), "no hashing thread found");
        assert!(nice.iter().all(|&n| n > 0), "nice values {nice:?}");
    }

    #[test]
    fn policy_from_the_seeds() {
        let e = "jo.bloggs@school.sch.uk";
        assert!(policy_problems("Tr0ubadour&Bells", e).is_empty());
        assert_eq!(
            policy_problems("Ab1!", e),
            ["Password must be at least 8 characters long"]
        );
        assert!(
            policy_problems("tr0ubadour&bells", e)
                .contains(&"Password must contain an uppercase letter")
        );
        assert!(
            policy_problems("TR0UBADOUR&BELLS", e)
                .contains(&"Password must contain a lowercase letter")
        );
        assert!(policy_problems("Troubadour&Bells", e).contains(&"Password must contain a number"));
        assert!(
            policy_problems("Tr0ubadourBells", e)
                .iter()
                .any(|p| p.contains("special character"))
        );
        // Meets every character rule but is on every common-password list.
        assert!(
            policy_problems("Password1!", e)
                .iter()
                .any(|p| p.contains("too common"))
        );
        assert!(
            policy_problems("Jo.bloggs1!", e)
                .iter()
                .any(|p| p.contains("too common"))
        );
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let h = Hasher::new(1);
        let stored = h.hash("Tr0ubadour&Bells".into()).await;
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(
            h.verify("Tr0ubadour&Bells".into(), Some(stored.clone()))
                .await
        );
        assert!(!h.verify("tr0ubadour&Bells".into(), Some(stored)).await);
        assert!(!h.verify("anything".into(), None).await);
    }
}
