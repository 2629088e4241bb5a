//! Typed, validated settings, layered from `config/base.toml` (embedded), `config/<env>.toml`,
//! `NCA_<SECTION>__<KEY>` variables and flags. The only module that reads the environment
//! (besides `nca-pipeline`'s own store variables); everything else is handed a `Settings`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The embedded copy of `config/base.toml`: every key and its default.
pub const BASE: &str = include_str!("../config/base.toml");

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("configuration key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("configuration key {key}: reading {path}: {source}")]
    SecretFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub data: Data,
    pub server: Server,
    pub admin: Admin,
    pub database: Database,
    pub store: StoreSettings,
    pub email: Email,
    pub auth: Auth,
    pub results: ResultsSettings,
    pub scripts: ScriptsSettings,
    pub reviews: ReviewsSettings,
    pub activities: ActivitiesSettings,
    pub rate_limits: RateLimits,
    pub admission: Admission,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RateLimits {
    pub per_user_per_minute: u32,
    pub per_org_per_minute: u32,
    pub per_ip_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Admission {
    pub downloads_in_flight: usize,
    pub pages_in_flight: usize,
    pub sign_ins_waiting: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResultsSettings {
    pub cache_mib: u64,
    /// Memory for schools' results pages rendered ahead of the opening time.
    pub pages_cache_mib: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScriptsSettings {
    pub cache_mib: u64,
    pub read_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ActivitiesSettings {
    /// Path of the cycle file; empty for the embedded config/cycle-2025.toml.
    pub cycle: String,
    /// Whole days added to every date in the cycle file (0 in production).
    pub shift_days: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReviewsSettings {
    /// YYYY-MM-DD, or empty for `deadline_days` after results open.
    pub deadline: String,
    pub deadline_days: i64,
}

impl ReviewsSettings {
    /// The configured deadline date, if one is set.
    pub fn deadline_date(&self) -> Option<jiff::civil::Date> {
        self.deadline.trim().parse().ok()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Data {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub listen: String,
    pub tls: bool,
    pub h2c: bool,
    pub public_url: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub handshake_timeout_secs: u64,
    pub keep_alive_secs: u64,
    pub max_connections: usize,
    pub io_threads: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub request_timeout_secs: u64,
    pub drain_secs: u64,
    pub json_logs: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Admin {
    pub listen: String,
}

#[derive(Clone, Deserialize)]
pub struct Database {
    pub url: String,
    #[serde(default)]
    pub url_file: String,
    pub max_connections: u32,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("Database")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoreSettings {
    pub url: String,
}

#[derive(Clone, Deserialize)]
pub struct Email {
    pub from: String,
    pub smtp_url: String,
    #[serde(default)]
    pub smtp_password: String,
    #[serde(default)]
    pub smtp_password_file: String,
    pub outbox: String,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("from", &self.from)
            .field("smtp", &!self.smtp_url.is_empty())
            .field("outbox", &self.outbox)
            .finish()
    }
}

#[derive(Clone, Deserialize)]
pub struct Auth {
    #[serde(default)]
    pub session_key: String,
    #[serde(default)]
    pub session_key_file: String,
    pub idle_minutes: i64,
    pub warning_minutes: i64,
    pub mfa_code_minutes: i64,
    pub mfa_max_attempts: i64,
    pub mfa_resend_seconds: i64,
    pub timezone: String,
    pub password_expiry_days: i64,
    pub invitation_hours: i64,
    pub reset_minutes: i64,
    pub hash_threads: usize,
    pub ip_attempts_per_minute: u32,
    pub free_failures: u32,
    pub max_delay_secs: u64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("session_key", &"<redacted>")
            .field("idle_minutes", &self.idle_minutes)
            .field("mfa_code_minutes", &self.mfa_code_minutes)
            .field("password_expiry_days", &self.password_expiry_days)
            .finish_non_exhaustive()
    }
}

/// Flags that override every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub store: Option<String>,
}

impl Settings {
    /// Load from the layers described in `config/base.toml`, reading the real environment.
    pub fn load(config_dir: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
        Self::load_from(config_dir, Env::prefixed("NCA_").split("__"), overrides)
    }

    /// Load with a given environment provider (tests pass their own).
    pub fn load_from(
        config_dir: &Path,
        env: Env,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let mut fig = Figment::new().merge(Toml::string(BASE));
        let base = config_dir.join("base.toml");
        if base.exists() {
            fig = fig.merge(Toml::file(base));
        }
        // NCA_ENV picks config/<env>.toml; it is read through the same provider as the rest.
        let env_name: Option<String> = fig
            .clone()
            .merge(env.clone().only(&["env"]))
            .extract_inner("env")
            .ok();
        if let Some(name) = env_name.filter(|n| !n.is_empty()) {
            fig = fig.merge(Toml::file(config_dir.join(format!("{name}.toml"))));
        }
        let env = env.ignore(&["env", "pipeline_store"]);
        let mut s: Settings = fig.merge(env).extract().map_err(Box::new)?;
        if let Some(d) = &overrides.data_dir {
            s.data.dir = d.clone();
        }
        if let Some(l) = &overrides.listen {
            s.server.listen = l.clone();
        }
        if let Some(u) = &overrides.store {
            s.store.url = u.clone();
        }
        s.resolve_secrets()?;
        s.validate()?;
        Ok(s)
    }

    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        fn read(key: &'static str, path: &str, into: &mut String) -> Result<(), ConfigError> {
            if path.is_empty() {
                return Ok(());
            }
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                key,
                path: path.to_string(),
                source,
            })?;
            *into = text.trim().to_string();
            Ok(())
        }
        read(
            "database.url_file",
            &self.database.url_file.clone(),
            &mut self.database.url,
        )?;
        read(
            "email.smtp_password_file",
            &self.email.smtp_password_file.clone(),
            &mut self.email.smtp_password,
        )?;
        read(
            "auth.session_key_file",
            &self.auth.session_key_file.clone(),
            &mut self.auth.session_key,
        )?;
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return bad("server.listen", "must be an address such as 127.0.0.1:8443");
        }
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<SocketAddr>().is_err() {
            return bad("admin.listen", "must be an address or empty");
        }
        if self.server.tls_cert.is_empty() != self.server.tls_key.is_empty() {
            return bad(
                "server.tls_cert",
                "give both tls_cert and tls_key, or neither",
            );
        }
        if !self.server.public_url.is_empty() && url::Url::parse(&self.server.public_url).is_err() {
            return bad(
                "server.public_url",
                "must be a URL such as https://portal.example",
            );
        }
        for (key, v) in [
            (
                "server.handshake_timeout_secs",
                self.server.handshake_timeout_secs,
            ),
            ("server.keep_alive_secs", self.server.keep_alive_secs),
            ("server.drain_secs", self.server.drain_secs),
            (
                "server.request_timeout_secs",
                self.server.request_timeout_secs,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1");
        }
        if self.server.max_header_bytes < 1024 {
            return bad("server.max_header_bytes", "must be at least 1024");
        }
        if self.auth.idle_minutes < 2 || self.auth.warning_minutes >= self.auth.idle_minutes {
            return bad(
                "auth.idle_minutes",
                "must be at least 2 and more than auth.warning_minutes",
            );
        }
        if self.auth.warning_minutes < 1 {
            return bad("auth.warning_minutes", "must be at least 1");
        }
        if self.auth.mfa_code_minutes < 1 || self.auth.mfa_max_attempts < 1 {
            return bad(
                "auth.mfa_code_minutes",
                "code lifetime and attempts must be at least 1",
            );
        }
        if self.auth.password_expiry_days < 0 {
            return bad("auth.password_expiry_days", "must be 0 (never) or more");
        }
        if !self.reviews.deadline.trim().is_empty() && self.reviews.deadline_date().is_none() {
            return bad("reviews.deadline", "must be a date YYYY-MM-DD, or empty");
        }
        if self.activities.shift_days.abs() > 36_500 {
            return bad("activities.shift_days", "must be within 100 years");
        }
        if self.reviews.deadline_days < 0 {
            return bad("reviews.deadline_days", "must be 0 or more");
        }
        if self.scripts.read_timeout_ms == 0 {
            return bad("scripts.read_timeout_ms", "must be at least 1");
        }
        if jiff::tz::TimeZone::get(&self.auth.timezone).is_err() {
            return bad("auth.timezone", "unknown IANA time zone");
        }
        for (key, v) in [
            (
                "rate_limits.per_user_per_minute",
                self.rate_limits.per_user_per_minute,
            ),
            (
                "rate_limits.per_org_per_minute",
                self.rate_limits.per_org_per_minute,
            ),
            (
                "rate_limits.per_ip_per_minute",
                self.rate_limits.per_ip_per_minute,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        for (key, v) in [
            (
                "admission.downloads_in_flight",
                self.admission.downloads_in_flight,
            ),
            ("admission.pages_in_flight", self.admission.pages_in_flight),
            (
                "admission.sign_ins_waiting",
                self.admission.sign_ins_waiting,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if self.auth.ip_attempts_per_minute == 0 {
            return bad("auth.ip_attempts_per_minute", "must be at least 1");
        }
        if !self.email.smtp_url.is_empty() && url::Url::parse(&self.email.smtp_url).is_err() {
            return bad("email.smtp_url", "must be a URL such as smtps://host:465");
        }
        if self.email.from.parse::<lettre::message::Mailbox>().is_err() {
            return bad(
                "email.from",
                "must be an address such as Name <a@b.example>",
            );
        }
        Ok(())
    }

    pub fn listen(&self) -> SocketAddr {
        self.server.listen.parse().expect("validated")
    }

    pub fn admin_listen(&self) -> Option<SocketAddr> {
        self.admin.listen.parse().ok()
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data.dir.join("portal.db").display()
            )
        } else {
            self.database.url.clone()
        }
    }

    pub fn store_url(&self) -> String {
        if self.store.url.is_empty() {
            self.data.dir.join("store").display().to_string()
        } else {
            self.store.url.clone()
        }
    }

    pub fn outbox(&self) -> PathBuf {
        if self.email.outbox.is_empty() {
            self.data.dir.join("outbox")
        } else {
            PathBuf::from(&self.email.outbox)
        }
    }

    pub fn public_url(&self) -> String {
        if self.server.public_url.is_empty() {
            format!("https://{}", self.server.listen)
        } else {
            self.server.public_url.trim_end_matches('/').to_string()
        }
    }

    /// Threads serving connections (`server.io_threads`, 0 = one per core).
    pub fn io_threads(&self) -> usize {
        match self.server.io_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn hash_threads(&self) -> usize {
        if self.auth.hash_threads > 0 {
            return self.auth.hash_threads;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        cores.saturating_sub(1).max(1)
    }

    pub fn timezone(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.auth.timezone).unwrap_or(jiff::tz::TimeZone::UTC)
    }
}

#[cfg(test)]
// figment's Jail closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn load(dir: &Path) -> Result<Settings, ConfigError> {
        Settings::load(dir, &Overrides::default())
    }

    #[test]
    fn embedded_defaults_load_and_validate() {
        figment::Jail::expect_with(|jail| {
            let s = load(jail.directory()).unwrap();
            assert_eq!(s.server.listen, "127.0.0.1:8443");
            assert_eq!(s.auth.idle_minutes, 30);
            assert!(s.database_url().starts_with("sqlite://"));
            assert!(s.hash_threads() >= 1);
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order_and_bad_values_name_the_key() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            jail.create_file("base.toml", "[server]\nlisten = \"127.0.0.1:9000\"\n")?;
            assert_eq!(load(&dir).unwrap().server.listen, "127.0.0.1:9000");
            jail.create_file("staging.toml", "[server]\nlisten = \"127.0.0.1:9002\"\n")?;
            jail.set_env("NCA_ENV", "staging");
            assert_eq!(load(&dir).unwrap().server.listen, "127.0.0.1:9002");
            jail.set_env("NCA_SERVER__LISTEN", "127.0.0.1:9003");
            assert_eq!(load(&dir).unwrap().server.listen, "127.0.0.1:9003");
            let flags = Overrides {
                listen: Some("127.0.0.1:9001".into()),
                ..Default::default()
            };
            let s = Settings::load(&dir, &flags).unwrap();
            assert_eq!(s.server.listen, "127.0.0.1:9001", "flags win");
            jail.set_env("NCA_AUTH__IDLE_MINUTES", "1");
            let e = load(&dir).unwrap_err().to_string();
            assert!(e.contains("auth.idle_minutes"), "{e}");
            jail.set_env("NCA_AUTH__IDLE_MINUTES", "30");
            jail.set_env("NCA_SERVER__LISTEN", "nowhere");
            let e = load(&dir).unwrap_err().to_string();
            assert!(e.contains("server.listen"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn secrets_come_from_files_and_never_show_in_debug() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            jail.create_file("key", "c2VjcmV0\n")?;
            jail.set_env(
                "NCA_AUTH__SESSION_KEY_FILE",
                dir.join("key").display().to_string(),
            );
            let s = load(&dir).unwrap();
            assert_eq!(s.auth.session_key, "c2VjcmV0");
            assert!(!format!("{s:?}").contains("c2VjcmV0"));
            jail.set_env("NCA_AUTH__SESSION_KEY_FILE", "/nonexistent/key");
            let e = load(&dir).unwrap_err().to_string();
            assert!(e.contains("auth.session_key_file"), "{e}");
            Ok(())
        });
    }
}
