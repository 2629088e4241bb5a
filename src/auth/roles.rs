//! Organisation kinds, roles and the rules of seeds 000 and 002: what each role may do and which
//! roles each may grant. Pure: no IO, so the role x action matrix is tested here exhaustively.

use serde::{Deserialize, Serialize};

/// The kinds of organisation that sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrgKind {
    Ks2School,
    Ks3School,
    La,
    Mat,
    Operator,
}

impl OrgKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OrgKind::Ks2School => "ks2-school",
            OrgKind::Ks3School => "ks3-school",
            OrgKind::La => "la",
            OrgKind::Mat => "mat",
            OrgKind::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<OrgKind> {
        [
            OrgKind::Ks2School,
            OrgKind::Ks3School,
            OrgKind::La,
            OrgKind::Mat,
            OrgKind::Operator,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    pub fn label(self) -> &'static str {
        match self {
            OrgKind::Ks2School => "Primary school",
            OrgKind::Ks3School => "Secondary school (KS3)",
            OrgKind::La => "Local authority",
            OrgKind::Mat => "Multi-academy trust",
            OrgKind::Operator => "Standards and Testing Agency",
        }
    }

    /// The kind of account that holds roles in this kind of organisation.
    pub fn account_kind(self) -> &'static str {
        match self {
            OrgKind::Ks2School => "school",
            OrgKind::Ks3School => "ks3",
            OrgKind::La => "la",
            OrgKind::Mat => "mat",
            OrgKind::Operator => "operator",
        }
    }
}

macro_rules! roles {
    ($($v:ident = $bit:expr, $name:literal, $label:literal, $kind:ident;)*) => {
        /// A permission level a user holds in one organisation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Role { $($v),* }

        impl Role {
            pub const ALL: &'static [Role] = &[$(Role::$v),*];
            pub fn name(self) -> &'static str { match self { $(Role::$v => $name),* } }
            pub fn label(self) -> &'static str { match self { $(Role::$v => $label),* } }
            pub fn org_kind(self) -> OrgKind { match self { $(Role::$v => OrgKind::$kind),* } }
            fn bit(self) -> u32 { match self { $(Role::$v => 1 << $bit),* } }
            pub fn parse(s: &str) -> Option<Role> {
                match s { $($name => Some(Role::$v),)* _ => None }
            }
        }
    };
}

roles! {
    AccountManager = 0, "account-manager", "School account manager", Ks2School;
    GeneralUser = 1, "general-user", "School general user", Ks2School;
    AccessArrangements = 2, "access-arrangements", "School access arrangements", Ks2School;
    LaAccountManager = 3, "la-account-manager", "Local authority account manager", La;
    LaSeniorManager = 4, "la-senior-manager", "Local authority senior manager", La;
    LaDeputyManager = 5, "la-deputy-manager", "Local authority deputy manager", La;
    LaGeneralUser = 6, "la-general-user", "Local authority general user", La;
    ModerationManager = 7, "moderation-manager", "Moderation manager", La;
    DeputyModerationManager = 8, "deputy-moderation-manager", "Deputy moderation manager", La;
    Moderator = 9, "moderator", "Moderator", La;
    MatUser = 10, "mat-user", "Multi-academy trust user", Mat;
    Ks3User = 11, "ks3-user", "KS3 school user", Ks3School;
    Operator = 12, "operator", "Operator", Operator;
}

impl Role {
    /// Roles that may be held in an organisation of this kind.
    pub fn for_kind(kind: OrgKind) -> impl Iterator<Item = Role> {
        Role::ALL
            .iter()
            .copied()
            .filter(move |r| r.org_kind() == kind)
    }
}

/// A set of roles held in one organisation; small enough to carry in the session cookie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSet(pub u32);

impl RoleSet {
    pub fn of(roles: &[Role]) -> RoleSet {
        RoleSet(roles.iter().fold(0, |a, r| a | r.bit()))
    }
    pub fn has(self, r: Role) -> bool {
        self.0 & r.bit() != 0
    }
    pub fn insert(&mut self, r: Role) {
        self.0 |= r.bit();
    }
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.iter().copied().filter(move |r| self.has(*r))
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Things a signed-in user may ask to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create and remove users and amend permissions (Manage access).
    ManageUsers,
    /// Update the organisation's phone number and email address.
    UpdateOrgDetails,
    /// Switch between local authorities within one account.
    SwitchLa,
    /// View KS2 results (own school, the LA's schools, the trust's academies).
    ViewResults,
    /// Tasks open to general users: registration, TA, declarations, orders.
    SchoolTasks,
    /// Make and view access arrangements applications.
    AccessArrangements,
    /// Manage teacher assessment on behalf of schools.
    ManageTa,
    /// Activities assigned to local authorities (monitoring, applications, reports).
    LaActivities,
    /// Standardisation training materials and exercises.
    Standardisation,
    /// Add moderated schools and upload external moderation summaries.
    Moderation,
    /// Look up incoming year 7 pupils' KS2 results.
    Ks3Lookup,
    /// Operator tasks: decide applications, reopen activities, manage any organisation.
    Operate,
}

impl Action {
    pub const ALL: &'static [Action] = &[
        Action::ManageUsers,
        Action::UpdateOrgDetails,
        Action::SwitchLa,
        Action::ViewResults,
        Action::SchoolTasks,
        Action::AccessArrangements,
        Action::ManageTa,
        Action::LaActivities,
        Action::Standardisation,
        Action::Moderation,
        Action::Ks3Lookup,
        Action::Operate,
    ];
}

/// Whether a user holding `roles` in an organisation may do `action` there (seed 002's table;
/// an account manager needs the other permissions too for other tasks).
pub fn allows(roles: RoleSet, action: Action) -> bool {
    use Role::*;
    let any = |rs: &[Role]| rs.iter().any(|r| roles.has(*r));
    if roles.has(Operator) {
        return !matches!(action, Action::SwitchLa | Action::Ks3Lookup);
    }
    match action {
        Action::ManageUsers => any(&[
            AccountManager,
            LaAccountManager,
            ModerationManager,
            DeputyModerationManager,
            MatUser,
        ]),
        Action::UpdateOrgDetails => any(&[AccountManager, LaAccountManager]),
        Action::SwitchLa => any(&[
            LaAccountManager,
            LaSeniorManager,
            LaDeputyManager,
            LaGeneralUser,
            ModerationManager,
            DeputyModerationManager,
            Moderator,
        ]),
        Action::ViewResults => any(&[
            GeneralUser,
            LaSeniorManager,
            LaDeputyManager,
            LaGeneralUser,
            MatUser,
        ]),
        Action::SchoolTasks => any(&[GeneralUser]),
        Action::AccessArrangements => any(&[AccessArrangements]),
        Action::ManageTa => any(&[LaSeniorManager, LaDeputyManager, LaGeneralUser]),
        Action::LaActivities => any(&[LaSeniorManager, LaDeputyManager]),
        Action::Standardisation => any(&[
            LaSeniorManager,
            LaDeputyManager,
            ModerationManager,
            DeputyModerationManager,
            Moderator,
        ]),
        Action::Moderation => any(&[
            LaSeniorManager,
            LaDeputyManager,
            ModerationManager,
            DeputyModerationManager,
        ]),
        Action::Ks3Lookup => any(&[Ks3User]),
        Action::Operate => false,
    }
}

/// Whether a user holding `actor` roles in an organisation may grant or remove `role` there.
/// School account managers manage every school permission (their own included); LA account
/// managers every LA role; moderation managers their moderation team ("Manage moderation team
/// access"); deputy moderation managers moderators; MAT users MAT users; the operator anything.
pub fn can_grant(actor: RoleSet, role: Role) -> bool {
    use Role::*;
    if actor.has(Operator) {
        return true;
    }
    match role {
        AccountManager | GeneralUser | AccessArrangements => actor.has(AccountManager),
        LaAccountManager | LaSeniorManager | LaDeputyManager | LaGeneralUser => {
            actor.has(LaAccountManager)
        }
        ModerationManager => actor.has(LaAccountManager),
        DeputyModerationManager => actor.has(LaAccountManager) || actor.has(ModerationManager),
        Moderator => {
            actor.has(LaAccountManager)
                || actor.has(ModerationManager)
                || actor.has(DeputyModerationManager)
        }
        MatUser => actor.has(MatUser),
        Ks3User | Operator => false,
    }
}

/// Users per school at most, and account managers among them (seed 002).
pub const SCHOOL_MAX_USERS: usize = 7;
pub const SCHOOL_MAX_ACCOUNT_MANAGERS: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use Action as A;
    use Role::*;

    /// The whole role x action matrix, written out: every cell is asserted, allowed or refused.
    #[test]
    fn role_action_matrix() {
        let expect: &[(Role, &[Action])] = &[
            (AccountManager, &[A::ManageUsers, A::UpdateOrgDetails]),
            (GeneralUser, &[A::ViewResults, A::SchoolTasks]),
            (AccessArrangements, &[A::AccessArrangements]),
            (
                LaAccountManager,
                &[A::ManageUsers, A::UpdateOrgDetails, A::SwitchLa],
            ),
            (
                LaSeniorManager,
                &[
                    A::SwitchLa,
                    A::ViewResults,
                    A::ManageTa,
                    A::LaActivities,
                    A::Standardisation,
                    A::Moderation,
                ],
            ),
            (
                LaDeputyManager,
                &[
                    A::SwitchLa,
                    A::ViewResults,
                    A::ManageTa,
                    A::LaActivities,
                    A::Standardisation,
                    A::Moderation,
                ],
            ),
            (LaGeneralUser, &[A::SwitchLa, A::ViewResults, A::ManageTa]),
            (
                ModerationManager,
                &[
                    A::ManageUsers,
                    A::SwitchLa,
                    A::Standardisation,
                    A::Moderation,
                ],
            ),
            (
                DeputyModerationManager,
                &[
                    A::ManageUsers,
                    A::SwitchLa,
                    A::Standardisation,
                    A::Moderation,
                ],
            ),
            (Moderator, &[A::SwitchLa, A::Standardisation]),
            (MatUser, &[A::ManageUsers, A::ViewResults]),
            (Ks3User, &[A::Ks3Lookup]),
            (
                Operator,
                &[
                    A::ManageUsers,
                    A::UpdateOrgDetails,
                    A::ViewResults,
                    A::SchoolTasks,
                    A::AccessArrangements,
                    A::ManageTa,
                    A::LaActivities,
                    A::Standardisation,
                    A::Moderation,
                    A::Operate,
                ],
            ),
        ];
        assert_eq!(expect.len(), Role::ALL.len(), "every role is in the table");
        for (role, allowed) in expect {
            for action in Action::ALL {
                assert_eq!(
                    allows(RoleSet::of(&[*role]), *action),
                    allowed.contains(action),
                    "{} / {action:?}",
                    role.name()
                );
            }
        }
    }

    #[test]
    fn grant_matrix() {
        let expect: &[(Role, &[Role])] = &[
            (
                AccountManager,
                &[AccountManager, GeneralUser, AccessArrangements],
            ),
            (GeneralUser, &[]),
            (AccessArrangements, &[]),
            (
                LaAccountManager,
                &[
                    LaAccountManager,
                    LaSeniorManager,
                    LaDeputyManager,
                    LaGeneralUser,
                    ModerationManager,
                    DeputyModerationManager,
                    Moderator,
                ],
            ),
            (LaSeniorManager, &[]),
            (LaDeputyManager, &[]),
            (LaGeneralUser, &[]),
            (ModerationManager, &[DeputyModerationManager, Moderator]),
            (DeputyModerationManager, &[Moderator]),
            (Moderator, &[]),
            (MatUser, &[MatUser]),
            (Ks3User, &[]),
            (Operator, Role::ALL),
        ];
        for (actor, grants) in expect {
            for role in Role::ALL {
                assert_eq!(
                    can_grant(RoleSet::of(&[*actor]), *role),
                    grants.contains(role),
                    "{} grants {}",
                    actor.name(),
                    role.name()
                );
            }
        }
    }

    #[test]
    fn names_round_trip_and_sets_hold_roles() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(*r));
        }
        assert_eq!(Role::parse("headteacher"), None);
        let s = RoleSet::of(&[GeneralUser, AccessArrangements]);
        assert!(s.has(GeneralUser) && !s.has(AccountManager));
        assert_eq!(s.iter().count(), 2);
        assert_eq!(
            Role::for_kind(OrgKind::La).count(),
            7,
            "seed 002's seven LA roles"
        );
        assert_eq!(Role::for_kind(OrgKind::Ks2School).count(), 3);
    }
}
