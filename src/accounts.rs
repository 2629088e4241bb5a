//! Account management, shared by the pages and the operator CLI: creating users (with an
//! invitation), removing them, amending permissions, with the seeds' rules (7 users and
//! 2 account managers per school, `+mod` second accounts, several LAs in one account). Every
//! change is audited and emailed to the organisation's account managers.

use crate::AppState;
use crate::auth::roles::{self, OrgKind, Role, RoleSet, can_grant};
use crate::auth::{new_link_token, normalise_email};
use crate::db::{self, Audit};

/// Who is making a change, and their roles in the organisation concerned.
#[derive(Debug, Clone)]
pub struct Actor {
    pub label: String,
    pub user_id: Option<String>,
    pub roles: RoleSet,
    pub ip: Option<String>,
}

impl Actor {
    /// The operator CLI.
    pub fn cli() -> Actor {
        Actor {
            label: "cli".into(),
            user_id: None,
            roles: RoleSet::of(&[Role::Operator]),
            ip: None,
        }
    }
}

/// A refusal the user can act on. Messages are shown on the page as they are.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AccountError {
    #[error("{1}")]
    Field(&'static str, String),
    #[error("You do not have permission to give the {0} permission")]
    CannotGrant(&'static str),
    #[error("Organisation {0} does not exist")]
    NoOrg(String),
    #[error("{0}")]
    Limit(String),
    #[error("User not found in this organisation")]
    NoUser,
}

#[derive(Debug)]
pub enum AccountFailure {
    Refused(AccountError),
    Unexpected(anyhow::Error),
}

impl From<AccountError> for AccountFailure {
    fn from(e: AccountError) -> Self {
        AccountFailure::Refused(e)
    }
}
impl From<sqlx::Error> for AccountFailure {
    fn from(e: sqlx::Error) -> Self {
        AccountFailure::Unexpected(e.into())
    }
}
impl From<anyhow::Error> for AccountFailure {
    fn from(e: anyhow::Error) -> Self {
        AccountFailure::Unexpected(e)
    }
}

impl std::fmt::Display for AccountFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccountFailure::Refused(e) => write!(f, "{e}"),
            AccountFailure::Unexpected(e) => write!(f, "{e:#}"),
        }
    }
}

/// What creating a user did.
#[derive(Debug)]
pub struct Created {
    pub user_id: String,
    /// The invitation link to set a password (None when a password was given, or when an
    /// existing LA account was given roles in another LA).
    pub invitation: Option<String>,
    pub added_to_existing: bool,
}

fn valid_email(e: &str) -> bool {
    e.len() <= 254
        && e.parse::<lettre::Address>().is_ok()
        && e.split('@').nth(1).is_some_and(|d| d.contains('.'))
}

/// Create a user (or, for an LA account that exists, give it roles in one more LA).
pub async fn create_user(
    state: &AppState,
    actor: &Actor,
    org_id: &str,
    name: &str,
    email: &str,
    roles: RoleSet,
    password: Option<&str>,
) -> Result<Created, AccountFailure> {
    let now = state.clock.now();
    let email = normalise_email(email);
    let name = name.trim();
    let org = db::org(&state.db, org_id)
        .await?
        .ok_or_else(|| AccountError::NoOrg(org_id.to_string()))?;
    if name.is_empty() || name.len() > 100 {
        return Err(AccountError::Field("name", "Enter the user's full name".into()).into());
    }
    if !valid_email(&email) {
        return Err(AccountError::Field(
            "email",
            "Enter an email address in the correct format, like name@example.com".into(),
        )
        .into());
    }
    check_roles(actor, org.kind, roles)?;
    if let Some(p) = password {
        let problems = crate::auth::password::policy_problems(p, &email);
        if let Some(first) = problems.first() {
            return Err(AccountError::Field("password", first.to_string()).into());
        }
    }
    let existing = db::user_by_email(&state.db, &email).await?;
    if let Some(u) = &existing {
        let refused = match (u.account_kind.as_str(), org.kind) {
            ("la", OrgKind::La) => None,
            ("school", OrgKind::La) => Some(format!(
                "{email} is already registered to a school account. For a local authority account \
                 use the same address with '+mod' added before the @, for example {}",
                plus_mod(&email)
            )),
            _ => Some(format!("{email} is already registered on the NCA Portal")),
        };
        if let Some(msg) = refused {
            return Err(AccountError::Field("email", msg).into());
        }
        let held = db::memberships(&state.db, &u.id).await?;
        if held.iter().any(|(o, _)| o == org_id) {
            return Err(AccountError::Field(
                "email",
                format!("{email} already has an account in this local authority: amend its permissions instead"),
            )
            .into());
        }
    }
    check_school_limits(state, &org, None, roles).await?;
    let (user_id, invitation, added) = match existing {
        Some(u) => (u.id, None, true),
        None => {
            let id = db::new_id();
            let hash = match password {
                Some(p) => Some(state.hasher.hash(p.to_string()).await),
                None => None,
            };
            db::insert_user(
                &state.db,
                &db::User {
                    id: id.clone(),
                    email: email.clone(),
                    name: name.to_string(),
                    account_kind: org.kind.account_kind().to_string(),
                    password_set_at: hash.as_ref().map(|_| now),
                    password_hash: hash,
                    sessions_valid_after: 0,
                },
                now,
            )
            .await?;
            let link = if password.is_none() {
                let (token, hash) = new_link_token();
                let hours = state.settings.auth.invitation_hours;
                db::insert_token(&state.db, &hash, &id, "invite", now + hours * 3600).await?;
                Some(format!("{}/set-password?token={token}", state.public_url))
            } else {
                None
            };
            (id, link, false)
        }
    };
    db::set_roles(&state.db, &user_id, org_id, roles).await?;
    let role_names = names(roles);
    audit(state, actor, org_id, "user-created", &email, &role_names).await?;
    let body = match &invitation {
        Some(link) => format!(
            "An NCA Portal account has been created for you at {} with these permissions: {role_names}.\n\n\
             Set your password using this link. It can be used once and expires in {} hours:\n{link}\n",
            org.name, state.settings.auth.invitation_hours
        ),
        None => format!(
            "Your NCA Portal account now has these permissions at {}: {role_names}.\n\
             Sign in at {}/sign-in\n",
            org.name, state.public_url
        ),
    };
    state
        .mailer
        .send(&email, "Your NCA Portal account", &body)
        .await?;
    notify_managers(
        state,
        org_id,
        &format!("User created: {email}"),
        &format!(
            "{} created an NCA Portal user for {} at {}: {email}, with {role_names}.\n",
            actor.label, name, org.name
        ),
    )
    .await?;
    Ok(Created {
        user_id,
        invitation,
        added_to_existing: added,
    })
}

fn plus_mod(email: &str) -> String {
    match email.split_once('@') {
        Some((l, d)) => format!("{l}+mod@{d}"),
        None => email.to_string(),
    }
}

fn names(roles: RoleSet) -> String {
    roles.iter().map(Role::label).collect::<Vec<_>>().join(", ")
}

fn check_roles(actor: &Actor, kind: OrgKind, roles: RoleSet) -> Result<(), AccountError> {
    if roles.is_empty() {
        return Err(AccountError::Field(
            "roles",
            "Select at least one permission".into(),
        ));
    }
    for r in roles.iter() {
        if r.org_kind() != kind {
            return Err(AccountError::Field(
                "roles",
                format!(
                    "The {} permission is not available for a {}",
                    r.label(),
                    kind.label().to_lowercase()
                ),
            ));
        }
        if !can_grant(actor.roles, r) {
            return Err(AccountError::CannotGrant(r.label()));
        }
    }
    Ok(())
}

/// At most 7 users and 2 account managers per school, counting the change being made; other
/// kinds of organisation have no limit.
async fn check_school_limits(
    state: &AppState,
    org: &db::Org,
    changing: Option<&str>,
    roles: RoleSet,
) -> Result<(), AccountFailure> {
    if !matches!(org.kind, OrgKind::Ks2School | OrgKind::Ks3School) {
        return Ok(());
    }
    let members = db::members(&state.db, &org.id).await?;
    let others: Vec<_> = members
        .iter()
        .filter(|m| Some(m.user_id.as_str()) != changing)
        .collect();
    if changing.is_none() && others.len() >= roles::SCHOOL_MAX_USERS {
        return Err(AccountError::Limit(format!(
            "Your school already has {} users, the most allowed. Remove a user before creating another",
            roles::SCHOOL_MAX_USERS
        ))
        .into());
    }
    let managers = others
        .iter()
        .filter(|m| m.roles.has(Role::AccountManager))
        .count()
        + usize::from(roles.has(Role::AccountManager));
    if managers > roles::SCHOOL_MAX_ACCOUNT_MANAGERS {
        return Err(AccountError::Limit(format!(
            "A school can have at most {} account managers",
            roles::SCHOOL_MAX_ACCOUNT_MANAGERS
        ))
        .into());
    }
    if managers == 0 && members.iter().any(|m| m.roles.has(Role::AccountManager)) {
        return Err(AccountError::Limit(
            "Your school must keep at least one account manager".into(),
        )
        .into());
    }
    Ok(())
}

/// An organisation, its members, and the one being changed.
async fn org_member(
    state: &AppState,
    org_id: &str,
    user_id: &str,
) -> Result<(db::Org, Vec<db::Member>, db::Member), AccountFailure> {
    let org = db::org(&state.db, org_id)
        .await?
        .ok_or_else(|| AccountError::NoOrg(org_id.to_string()))?;
    let members = db::members(&state.db, org_id).await?;
    let target = members
        .iter()
        .find(|m| m.user_id == user_id)
        .ok_or(AccountError::NoUser)?
        .clone();
    Ok((org, members, target))
}

/// Amend a user's permissions in an organisation (an account manager may amend their own).
pub async fn set_permissions(
    state: &AppState,
    actor: &Actor,
    org_id: &str,
    user_id: &str,
    roles: RoleSet,
) -> Result<(), AccountFailure> {
    let (org, _, target) = org_member(state, org_id, user_id).await?;
    check_roles(actor, org.kind, roles)?;
    // Removing a role needs the right to grant it, too.
    for r in target.roles.iter() {
        if !roles.has(r) && !can_grant(actor.roles, r) {
            return Err(AccountError::CannotGrant(r.label()).into());
        }
    }
    check_school_limits(state, &org, Some(user_id), roles).await?;
    db::set_roles(&state.db, user_id, org_id, roles).await?;
    // Sessions carry roles: end the user's sessions so that new ones pick the change up.
    revoke(state, user_id).await?;
    let detail = format!("{} -> {}", names(target.roles), names(roles));
    audit(
        state,
        actor,
        org_id,
        "permissions-amended",
        &target.email,
        &detail,
    )
    .await?;
    state
        .mailer
        .send(
            &target.email,
            "Your NCA Portal permissions have changed",
            &format!(
                "Your permissions at {} are now: {}.\n",
                org.name,
                names(roles)
            ),
        )
        .await?;
    notify_managers(
        state,
        org_id,
        &format!("Permissions amended: {}", target.email),
        &format!(
            "{} amended {}'s permissions at {}: {detail}.\n",
            actor.label, target.email, org.name
        ),
    )
    .await?;
    Ok(())
}

/// Remove a user from an organisation. An account left with no organisation is deleted.
/// Their sessions end at once.
pub async fn remove_user(
    state: &AppState,
    actor: &Actor,
    org_id: &str,
    user_id: &str,
) -> Result<(), AccountFailure> {
    let (org, members, target) = org_member(state, org_id, user_id).await?;
    for r in target.roles.iter() {
        if !can_grant(actor.roles, r) {
            return Err(AccountError::CannotGrant(r.label()).into());
        }
    }
    if target.roles.has(Role::AccountManager)
        && members
            .iter()
            .filter(|m| m.roles.has(Role::AccountManager))
            .count()
            == 1
        && members.len() > 1
    {
        return Err(AccountError::Limit(
            "This is the school's only account manager: give another user that permission first"
                .into(),
        )
        .into());
    }
    db::set_roles(&state.db, user_id, org_id, RoleSet::default()).await?;
    revoke(state, user_id).await?;
    if db::memberships(&state.db, user_id).await?.is_empty() {
        db::delete_user(&state.db, user_id).await?;
    }
    audit(state, actor, org_id, "user-removed", &target.email, "").await?;
    notify_managers(
        state,
        org_id,
        &format!("User removed: {}", target.email),
        &format!(
            "{} removed {} ({}) from {}.\n",
            actor.label, target.name, target.email, org.name
        ),
    )
    .await?;
    Ok(())
}

async fn revoke(state: &AppState, user_id: &str) -> anyhow::Result<()> {
    // One second on, so that a session issued in this same second is ended too.
    let after = state.clock.now() + 1;
    db::revoke_sessions(&state.db, user_id, after).await?;
    state.revocations.set(user_id, after);
    Ok(())
}

async fn audit(
    state: &AppState,
    actor: &Actor,
    org_id: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> anyhow::Result<()> {
    db::audit(
        &state.db,
        Audit {
            actor: Some(&actor.label),
            org_id: Some(org_id),
            action,
            target: Some(target),
            detail: detail.to_string(),
            ip: actor.ip.clone(),
        },
        state.clock.now(),
    )
    .await?;
    Ok(())
}

/// Email every account manager of the organisation (for an LA, its LA account managers).
pub async fn notify_managers(
    state: &AppState,
    org_id: &str,
    subject: &str,
    body: &str,
) -> anyhow::Result<()> {
    for m in db::members(&state.db, org_id).await? {
        if m.roles.has(Role::AccountManager)
            || m.roles.has(Role::LaAccountManager)
            || m.roles.has(Role::MatUser)
        {
            state.mailer.send(&m.email, subject, body).await?;
        }
    }
    Ok(())
}
