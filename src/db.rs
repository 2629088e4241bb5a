//! The portal database: connection, embedded migrations, and the queries of each entity.
//! SQLite (WAL) by default, PostgreSQL by URL: the SQL here is portable (numbered `$n`
//! parameters, TEXT and BIGINT only). Never used on the results hot path.

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use crate::auth::roles::{OrgKind, Role, RoleSet};

pub type Db = AnyPool;

/// Open the database, creating a SQLite file if needed, and run the embedded migrations.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
    install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    if sqlite && let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(parent) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let pool = AnyPoolOptions::new()
        .max_connections(if sqlite {
            max_connections.min(4)
        } else {
            max_connections
        })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // WAL lets readers run beside the one writer; wait rather than fail on a lock.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("opening database: {e}"))?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?;
    Ok(pool)
}

/// A new random id (128 bits, hex).
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[derive(Debug, Clone)]
pub struct Org {
    pub id: String,
    pub kind: OrgKind,
    pub name: String,
    pub la_code: Option<String>,
    pub trust_uid: Option<String>,
    pub phone: String,
    pub email: String,
    pub school_type: Option<String>,
}

/// Every organisation of a kind, by id (the operator's status pages).
pub async fn orgs_of_kind(db: &Db, kind: OrgKind) -> sqlx::Result<Vec<Org>> {
    let rows = sqlx::query("SELECT * FROM orgs WHERE kind = $1 ORDER BY id")
        .bind(kind.as_str())
        .fetch_all(db)
        .await?;
    Ok(rows.iter().map(org_from).collect())
}

/// The schools of an LA or a trust.
pub async fn schools_of(
    db: &Db,
    la_code: Option<&str>,
    trust: Option<&str>,
) -> sqlx::Result<Vec<Org>> {
    let rows = sqlx::query(
        "SELECT * FROM orgs WHERE kind = 'ks2-school' AND (la_code = $1 OR trust_uid = $2) ORDER BY name",
    )
    .bind(la_code.unwrap_or("\u{0}"))
    .bind(trust.unwrap_or("\u{0}"))
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(org_from).collect())
}

fn org_from(r: &sqlx::any::AnyRow) -> Org {
    Org {
        id: r.get("id"),
        kind: OrgKind::parse(&r.get::<String, _>("kind")).unwrap_or(OrgKind::Ks2School),
        name: r.get("name"),
        la_code: r.get("la_code"),
        trust_uid: r.get("trust_uid"),
        phone: r.get("phone"),
        email: r.get("email"),
        school_type: r.get("school_type"),
    }
}

pub async fn org(db: &Db, id: &str) -> sqlx::Result<Option<Org>> {
    let r = sqlx::query("SELECT * FROM orgs WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(r.as_ref().map(org_from))
}

/// One organisation's details as imported.
#[derive(Debug, Clone)]
pub struct OrgImport {
    pub id: String,
    pub kind: OrgKind,
    pub name: String,
    pub la_code: Option<String>,
    pub trust_uid: Option<String>,
    pub urn: Option<String>,
    pub phase: Option<String>,
    pub school_type: Option<String>,
}

/// Insert or update organisations in one transaction; returns (added, updated).
pub async fn upsert_orgs(db: &Db, orgs: &[OrgImport], now: i64) -> sqlx::Result<(usize, usize)> {
    let mut tx = db.begin().await?;
    let (mut added, mut updated) = (0, 0);
    for o in orgs {
        let existing = sqlx::query(
            "SELECT kind, name, la_code, trust_uid, urn, phase, school_type FROM orgs WHERE id = $1",
        )
        .bind(&o.id)
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            None => {
                sqlx::query(
                    "INSERT INTO orgs (id, kind, name, la_code, trust_uid, urn, phase, school_type, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&o.id)
                .bind(o.kind.as_str())
                .bind(&o.name)
                .bind(&o.la_code)
                .bind(&o.trust_uid)
                .bind(&o.urn)
                .bind(&o.phase)
                .bind(&o.school_type)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                added += 1;
            }
            Some(r) => {
                let same = r.get::<String, _>("kind") == o.kind.as_str()
                    && r.get::<String, _>("name") == o.name
                    && r.get::<Option<String>, _>("la_code") == o.la_code
                    && r.get::<Option<String>, _>("trust_uid") == o.trust_uid
                    && r.get::<Option<String>, _>("urn") == o.urn
                    && r.get::<Option<String>, _>("phase") == o.phase
                    && r.get::<Option<String>, _>("school_type") == o.school_type;
                if !same {
                    sqlx::query(
                        "UPDATE orgs SET kind = $2, name = $3, la_code = $4, trust_uid = $5, urn = $6, \
                         phase = $7, school_type = $8, updated_at = $9 WHERE id = $1",
                    )
                    .bind(&o.id)
                    .bind(o.kind.as_str())
                    .bind(&o.name)
                    .bind(&o.la_code)
                    .bind(&o.trust_uid)
                    .bind(&o.urn)
                    .bind(&o.phase)
                    .bind(&o.school_type)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    updated += 1;
                }
            }
        }
    }
    tx.commit().await?;
    Ok((added, updated))
}

pub async fn update_org_contact(
    db: &Db,
    id: &str,
    phone: &str,
    email: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE orgs SET phone = $2, email = $3, updated_at = $4 WHERE id = $1")
        .bind(id)
        .bind(phone)
        .bind(email)
        .bind(now)
        .execute(db)
        .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub account_kind: String,
    pub password_hash: Option<String>,
    pub password_set_at: Option<i64>,
    pub sessions_valid_after: i64,
}

fn user_from(r: &sqlx::any::AnyRow) -> User {
    User {
        id: r.get("id"),
        email: r.get("email"),
        name: r.get("name"),
        account_kind: r.get("account_kind"),
        password_hash: r.get("password_hash"),
        password_set_at: r.get("password_set_at"),
        sessions_valid_after: r.get("sessions_valid_after"),
    }
}

pub async fn user_by_email(db: &Db, email: &str) -> sqlx::Result<Option<User>> {
    let r = sqlx::query("SELECT * FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(db)
        .await?;
    Ok(r.as_ref().map(user_from))
}

pub async fn user(db: &Db, id: &str) -> sqlx::Result<Option<User>> {
    let r = sqlx::query("SELECT * FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(r.as_ref().map(user_from))
}

pub async fn insert_user(db: &Db, u: &User, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO users (id, email, name, account_kind, password_hash, password_set_at, sessions_valid_after, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
    )
    .bind(&u.id)
    .bind(&u.email)
    .bind(&u.name)
    .bind(&u.account_kind)
    .bind(&u.password_hash)
    .bind(u.password_set_at)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn delete_user(db: &Db, id: &str) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    for q in [
        "DELETE FROM memberships WHERE user_id = $1",
        "DELETE FROM tokens WHERE user_id = $1",
        "DELETE FROM mfa_codes WHERE user_id = $1",
        "DELETE FROM users WHERE id = $1",
    ] {
        sqlx::query(q).bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Set a new password and end every session issued before `now`.
pub async fn set_password(db: &Db, id: &str, hash: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE users SET password_hash = $2, password_set_at = $3, sessions_valid_after = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(hash)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn revoke_sessions(db: &Db, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET sessions_valid_after = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(db)
        .await?;
    Ok(())
}

/// Users whose sessions were revoked after `since`: (id, sessions_valid_after).
pub async fn revocations_since(db: &Db, since: i64) -> sqlx::Result<Vec<(String, i64)>> {
    let rows =
        sqlx::query("SELECT id, sessions_valid_after FROM users WHERE sessions_valid_after > $1")
            .bind(since)
            .fetch_all(db)
            .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("id"), r.get("sessions_valid_after")))
        .collect())
}

/// Every (org, roles) a user holds.
pub async fn memberships(db: &Db, user_id: &str) -> sqlx::Result<Vec<(String, RoleSet)>> {
    let rows =
        sqlx::query("SELECT org_id, role FROM memberships WHERE user_id = $1 ORDER BY org_id")
            .bind(user_id)
            .fetch_all(db)
            .await?;
    let mut out: Vec<(String, RoleSet)> = Vec::new();
    for r in rows {
        let org: String = r.get("org_id");
        let Some(role) = Role::parse(&r.get::<String, _>("role")) else {
            continue;
        };
        match out.last_mut() {
            Some((o, set)) if *o == org => set.insert(role),
            _ => out.push((org, RoleSet::of(&[role]))),
        }
    }
    Ok(out)
}

/// Replace a user's roles in one organisation (an empty set removes them from it).
pub async fn set_roles(db: &Db, user_id: &str, org_id: &str, roles: RoleSet) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND org_id = $2")
        .bind(user_id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    for r in roles.iter() {
        sqlx::query("INSERT INTO memberships (user_id, org_id, role) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(org_id)
            .bind(r.name())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// A member of an organisation, for Manage users.
#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub roles: RoleSet,
    pub active: bool,
}

pub async fn members(db: &Db, org_id: &str) -> sqlx::Result<Vec<Member>> {
    let rows = sqlx::query(
        "SELECT u.id, u.email, u.name, u.password_hash, m.role FROM memberships m \
         JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 ORDER BY u.name, u.email",
    )
    .bind(org_id)
    .fetch_all(db)
    .await?;
    let mut out: Vec<Member> = Vec::new();
    for r in rows {
        let id: String = r.get("id");
        let role = Role::parse(&r.get::<String, _>("role"));
        if out.last().is_none_or(|m| m.user_id != id) {
            out.push(Member {
                user_id: id,
                email: r.get("email"),
                name: r.get("name"),
                roles: RoleSet::default(),
                active: r.get::<Option<String>, _>("password_hash").is_some(),
            });
        }
        if let (Some(m), Some(role)) = (out.last_mut(), role) {
            m.roles.insert(role);
        }
    }
    Ok(out)
}

/// A single-use link's stored form.
pub async fn insert_token(
    db: &Db,
    hash: &str,
    user_id: &str,
    purpose: &str,
    expires_at: i64,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO tokens (hash, user_id, purpose, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(hash)
        .bind(user_id)
        .bind(purpose)
        .bind(expires_at)
        .execute(db)
        .await?;
    Ok(())
}

/// The user of an unused, unexpired token, without using it.
pub async fn token_user(
    db: &Db,
    hash: &str,
    purpose: &str,
    now: i64,
) -> sqlx::Result<Option<String>> {
    let r = sqlx::query(
        "SELECT user_id FROM tokens WHERE hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
    )
    .bind(hash)
    .bind(purpose)
    .bind(now)
    .fetch_optional(db)
    .await?;
    Ok(r.map(|r| r.get("user_id")))
}

/// Mark a token used; true only for the one caller that used it.
pub async fn use_token(db: &Db, hash: &str, now: i64) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE tokens SET used_at = $2 WHERE hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(hash)
    .bind(now)
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(Debug, Clone)]
pub struct MfaCode {
    pub code_hash: String,
    pub sent_at: i64,
    pub expires_at: i64,
    pub attempts: i64,
    pub used_at: Option<i64>,
}

pub async fn mfa_code(db: &Db, user_id: &str) -> sqlx::Result<Option<MfaCode>> {
    let r = sqlx::query("SELECT * FROM mfa_codes WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db)
        .await?;
    Ok(r.map(|r| MfaCode {
        code_hash: r.get("code_hash"),
        sent_at: r.get("sent_at"),
        expires_at: r.get("expires_at"),
        attempts: r.get("attempts"),
        used_at: r.get("used_at"),
    }))
}

pub async fn put_mfa_code(
    db: &Db,
    user_id: &str,
    hash: &str,
    now: i64,
    expires_at: i64,
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM mfa_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO mfa_codes (user_id, code_hash, sent_at, expires_at, attempts) VALUES ($1, $2, $3, $4, 0)",
    )
    .bind(user_id)
    .bind(hash)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Count one attempt; returns the attempts made so far including this one.
pub async fn mfa_attempt(db: &Db, user_id: &str) -> sqlx::Result<i64> {
    sqlx::query("UPDATE mfa_codes SET attempts = attempts + 1 WHERE user_id = $1")
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(mfa_code(db, user_id)
        .await?
        .map_or(i64::MAX, |c| c.attempts))
}

/// Mark the code used; true only for the one caller that used it (no replay).
pub async fn use_mfa_code(db: &Db, user_id: &str, now: i64) -> sqlx::Result<bool> {
    let r = sqlx::query("UPDATE mfa_codes SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
        .bind(user_id)
        .bind(now)
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// One audit record: who did what, when, to whom.
#[derive(Debug, Clone, Default)]
pub struct Audit<'a> {
    pub actor: Option<&'a str>,
    pub org_id: Option<&'a str>,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub detail: String,
    pub ip: Option<String>,
}

pub async fn audit(db: &Db, a: Audit<'_>, now: i64) -> sqlx::Result<()> {
    audit_batch(db, &[(a, now)]).await
}

/// One access to pupil data (a download, a lookup, a page of results).
#[derive(Debug)]
pub struct Access {
    pub at: i64,
    pub actor: std::sync::Arc<str>,
    pub org_id: std::sync::Arc<str>,
    pub action: &'static str,
    pub target: std::sync::Arc<str>,
}

/// Append access records in one statement: the rows travel as a single JSON parameter
/// (SQLite's `json_each`, PostgreSQL's `json_array_elements`), so a batch of thousands costs
/// one parse, no per-parameter binding and one append per row to an unindexed table.
/// Identical records (same second, actor, organisation, action and target) become one row
/// with their count in `times`, in the order each first appeared.
pub async fn access_batch(db: &Db, rows: &[Access]) -> sqlx::Result<()> {
    let json = serde_json::to_string(&coalesce(rows)).expect("access rows serialise");
    let mut conn = db.acquire().await?;
    let sql = if conn.backend_name() == "PostgreSQL" {
        "INSERT INTO access_log (at, actor, org_id, action, target, times) \
         SELECT (e->>0)::bigint, e->>1, e->>2, e->>3, e->>4, (e->>5)::bigint \
         FROM json_array_elements($1::json) AS e"
    } else {
        "INSERT INTO access_log (at, actor, org_id, action, target, times) \
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 FROM json_each($1)"
    };
    sqlx::query(sql).bind(json).execute(&mut *conn).await?;
    Ok(())
}

/// One row per distinct record, with how many times it occurred, in first-seen order.
/// This runs once for every download, so records are first grouped by the addresses of their
/// shared strings (the fast path sends one session's and one download's `Arc`s again and
/// again: five words to hash, however long the strings), and only those groups by value.
/// Hashed with foldhash (seeded per process): SipHash over the records' strings cost more
/// than the rest of the writer (bench/instructions.sh); a batch holds at most `AUDIT_BATCH`
/// records, all made by the server from signed-in sessions, so there are few keys for anyone
/// to choose.
fn coalesce(rows: &[Access]) -> Vec<(i64, &str, &str, &str, &str, u64)> {
    type Addresses = (i64, *const u8, *const u8, *const u8, *const u8);
    let mut by_address: foldhash::HashMap<Addresses, usize> = foldhash::HashMap::default();
    let mut groups: Vec<(&Access, u64)> = Vec::new();
    for a in rows {
        let key = (
            a.at,
            std::sync::Arc::as_ptr(&a.actor).cast::<u8>(),
            std::sync::Arc::as_ptr(&a.org_id).cast::<u8>(),
            a.action.as_ptr(),
            std::sync::Arc::as_ptr(&a.target).cast::<u8>(),
        );
        match by_address.entry(key) {
            std::collections::hash_map::Entry::Occupied(i) => groups[*i.get()].1 += 1,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(groups.len());
                groups.push((a, 1));
            }
        }
    }
    let mut at: foldhash::HashMap<(i64, &str, &str, &str, &str), usize> =
        foldhash::HashMap::default();
    let mut out: Vec<(i64, &str, &str, &str, &str, u64)> = Vec::new();
    for (a, n) in groups {
        let key = (a.at, &*a.actor, &*a.org_id, a.action, &*a.target);
        match at.entry(key) {
            std::collections::hash_map::Entry::Occupied(i) => out[*i.get()].5 += n,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(out.len());
                out.push((key.0, key.1, key.2, key.3, key.4, n));
            }
        }
    }
    out
}

/// Write audit rows in one transaction, with time-ordered ids (so the primary key grows at
/// its end). Administrative events: few, and each may be looked up by organisation.
pub async fn audit_batch(db: &Db, rows: &[(Audit<'_>, i64)]) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    for (a, at) in rows {
        sqlx::query(
            "INSERT INTO audit (id, at, actor, org_id, action, target, detail, ip) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(ordered_id(*at))
        .bind(*at)
        .bind(a.actor)
        .bind(a.org_id)
        .bind(a.action)
        .bind(a.target)
        .bind(a.detail.clone())
        .bind(a.ip.clone())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// An id that sorts by time: the second, this process's random tag, a counter.
fn ordered_id(at: i64) -> String {
    static TAG: std::sync::LazyLock<u32> = std::sync::LazyLock::new(rand::random);
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:010x}{:08x}{n:014x}", at.max(0), *TAG)
}

/// Audit rows for an organisation (or all), newest first: (at, actor, action, target, detail).
pub async fn audit_rows(
    db: &Db,
    org_id: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<(i64, String, String, String, String)>> {
    const BOTH: &str = "SELECT at, actor, action, target, detail, org_id FROM audit \
         UNION ALL SELECT at, actor, action, target, \
         CASE WHEN times > 1 THEN CAST(times AS TEXT) || ' times' ELSE '' END AS detail, org_id \
         FROM access_log";
    let rows = match org_id {
        Some(o) => {
            sqlx::query(&format!(
                "SELECT * FROM ({BOTH}) AS a WHERE org_id = $1 ORDER BY at DESC LIMIT $2"
            ))
            .bind(o)
            .bind(limit)
            .fetch_all(db)
            .await?
        }
        None => {
            sqlx::query(&format!(
                "SELECT * FROM ({BOTH}) AS a ORDER BY at DESC LIMIT $1"
            ))
            .bind(limit)
            .fetch_all(db)
            .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get("at"),
                r.get::<Option<String>, _>("actor").unwrap_or_default(),
                r.get("action"),
                r.get::<Option<String>, _>("target").unwrap_or_default(),
                r.get("detail"),
            )
        })
        .collect())
}

/// Claim the job of telling an organisation about a release; true for exactly one caller.
pub async fn claim_release_notice(
    db: &Db,
    release_id: &str,
    org_id: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO release_notices (release_id, org_id, sent_at) VALUES ($1, $2, $3) \
         ON CONFLICT (release_id, org_id) DO NOTHING",
    )
    .bind(release_id)
    .bind(org_id)
    .bind(now)
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// An organisation API token as stored (the secret itself is never kept).
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub created_by: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

fn api_token(r: &sqlx::any::AnyRow) -> ApiToken {
    ApiToken {
        id: r.get("id"),
        org_id: r.get("org_id"),
        name: r.get("name"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        last_used_at: r.get("last_used_at"),
        revoked_at: r.get("revoked_at"),
    }
}

const API_TOKEN_COLUMNS: &str =
    "id, org_id, name, created_by, created_at, last_used_at, revoked_at";

pub async fn insert_api_token(db: &Db, t: &ApiToken, hash: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO api_tokens (id, hash, org_id, name, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&t.id)
    .bind(hash)
    .bind(&t.org_id)
    .bind(&t.name)
    .bind(&t.created_by)
    .bind(t.created_at)
    .execute(db)
    .await?;
    Ok(())
}

/// An organisation's tokens, newest first.
pub async fn api_tokens(db: &Db, org_id: &str) -> sqlx::Result<Vec<ApiToken>> {
    let rows = sqlx::query(&format!(
        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE org_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(org_id)
    .fetch_all(db)
    .await?;
    Ok(rows.iter().map(api_token).collect())
}

/// The token with this hash, noting that it was used now.
pub async fn api_token_by_hash(db: &Db, hash: &str, now: i64) -> sqlx::Result<Option<ApiToken>> {
    let row = sqlx::query(&format!(
        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1"
    ))
    .bind(hash)
    .fetch_optional(db)
    .await?;
    let Some(t) = row.as_ref().map(api_token) else {
        return Ok(None);
    };
    if t.revoked_at.is_none() {
        sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
            .bind(&t.id)
            .bind(now)
            .execute(db)
            .await?;
    }
    Ok(Some(t))
}

/// Revoke one of an organisation's tokens; true if it was live.
pub async fn revoke_api_token(db: &Db, id: &str, org_id: &str, now: i64) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE api_tokens SET revoked_at = $3 WHERE id = $1 AND org_id = $2 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(org_id)
    .bind(now)
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Give up a claim whose notice could not be sent, so the next attempt sends it.
pub async fn unclaim_release_notice(db: &Db, release_id: &str, org_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM release_notices WHERE release_id = $1 AND org_id = $2")
        .bind(release_id)
        .bind(org_id)
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn coalesce_counts_equal_records_whether_or_not_they_share_their_strings() {
        let record = |at, actor: &Arc<str>, target: &Arc<str>| Access {
            at,
            actor: actor.clone(),
            org_id: "100001".into(),
            action: "results-download",
            target: target.clone(),
        };
        let (ann, bob): (Arc<str>, Arc<str>) = ("ann@example.org".into(), "bob@example.org".into());
        let csv: Arc<str> = "r1/school/1.csv".into();
        // The same strings in separate allocations (the router's path makes its own).
        let (ann2, csv2): (Arc<str>, Arc<str>) =
            ("ann@example.org".into(), "r1/school/1.csv".into());
        let rows = vec![
            record(10, &ann, &csv),
            record(10, &bob, &csv),
            record(10, &ann, &csv),
            record(10, &ann2, &csv2),
            record(11, &ann, &csv),
            record(10, &bob, &csv2),
        ];
        let out = coalesce(&rows);
        let got: Vec<(i64, &str, u64)> = out.iter().map(|r| (r.0, r.1, r.5)).collect();
        assert_eq!(
            got,
            vec![
                (10, "ann@example.org", 3),
                (10, "bob@example.org", 2),
                (11, "ann@example.org", 1)
            ],
            "one row per distinct record, counted, in first-seen order"
        );
        assert_eq!(out.iter().map(|r| r.5).sum::<u64>(), rows.len() as u64);
        assert!(
            out.iter()
                .all(|r| r.2 == "100001" && r.3 == "results-download" && r.4 == "r1/school/1.csv")
        );
    }
}
