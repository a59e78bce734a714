//! Who is acting.

use crate::{ActorId, TenantId};

/// The kind of principal behind a request or a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum ActorKind {
    /// A signed-in customer user.
    User,
    /// An operator of the service; the only kind that may hold a cross-tenant grant.
    Staff,
    /// An AI agent acting on a tenant's behalf; never approves its own proposals.
    Agent,
    /// A background job or maintenance task.
    System,
}

impl ActorKind {
    /// The stable lowercase name, as used in logs and audit events.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Staff => "staff",
            Self::Agent => "agent",
            Self::System => "system",
        }
    }
}

/// An authenticated principal acting for exactly one home tenant.
///
/// Created by the authentication layer (for example `magic-auth`'s session layer) and placed in
/// the request extensions, where [`ActorResolver`](crate::ActorResolver) finds it.
///
/// An actor that acts through a session carries the session's id ([`with_session`](
/// Self::with_session)), so that the database can refuse every statement made for a session
/// that has ended (see `rls-guard`'s `SessionLiveness`). The session is not part of the
/// actor's identity: two actors are equal when kind, id and tenant are, and it is never
/// serialised.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Actor {
    kind: ActorKind,
    id: ActorId,
    tenant: TenantId,
    #[cfg_attr(feature = "serde", serde(skip))]
    session: Option<uuid::Uuid>,
}

impl PartialEq for Actor {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.id == other.id && self.tenant == other.tenant
    }
}

impl Eq for Actor {}

impl Actor {
    /// An actor of `kind` with identity `id`, acting for `tenant`.
    #[must_use]
    pub const fn new(kind: ActorKind, id: ActorId, tenant: TenantId) -> Self {
        Self {
            kind,
            id,
            tenant,
            session: None,
        }
    }

    /// The same actor, acting through the session `id` (of its own tenant).
    #[must_use]
    pub const fn with_session(mut self, id: uuid::Uuid) -> Self {
        self.session = Some(id);
        self
    }

    /// The session the actor acts through, if any.
    #[must_use]
    pub const fn session(&self) -> Option<uuid::Uuid> {
        self.session
    }

    /// The kind of principal.
    #[must_use]
    pub const fn kind(&self) -> ActorKind {
        self.kind
    }

    /// The actor's identity.
    #[must_use]
    pub const fn id(&self) -> ActorId {
        self.id
    }

    /// The tenant the actor belongs to.
    #[must_use]
    pub const fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Whether this actor is staff.
    #[must_use]
    pub const fn is_staff(&self) -> bool {
        matches!(self.kind, ActorKind::Staff)
    }
}
