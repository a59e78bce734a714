//! Who is acting, for which tenant — resolved once, carried everywhere, never defaulted.
//!
//! In a multi-tenant service the worst bug is serving one tenant's data to another. This crate
//! is the application-layer half of the defence (PostgreSQL row-level security through
//! `rls-guard` is the other half): it turns each request into a validated [`TenantContext`] or
//! refuses it before any handler or database work runs.
//!
//! - [`TenantId`], [`ActorId`], [`Actor`]: validated identities (canonical UUIDs, never nil).
//! - [`TenantResolver`]s: the signed-in [`ActorResolver`] (primary), a trusted
//!   [`HeaderResolver`], a [`SubdomainResolver`]; [`AllAgree`] requires every present source to
//!   name the same tenant.
//! - [`TenantLayer`] / [`Tenant`]: tower middleware that resolves before the inner service runs
//!   (through asynchronous resolvers and an optional [`TenantDirectory`]) and rejects
//!   missing (400 `tenant_required`), malformed (400 `tenant_malformed`), conflicting
//!   (403 `tenant_mismatch`) or unknown (403 `tenant_unknown`) tenants, and answers 503
//!   `tenant_unavailable` when the tenant directory cannot be consulted.
//! - [`Rejection`]: the workspace's one HTTP refusal (status, stable code, message; JSON body
//!   `{"error":"<code>","message":"<text>"}`), which every crate's layers and extractors answer
//!   with; [`TenantRejection`] is this crate's.
//! - [`scope`]: task-local propagation with an explicit spawn helper; no scope is an error.
//! - [`CrossTenantAuthority`]: the only way to act in another tenant — staff only, with a
//!   reason, audited before it is granted, expiring after a [`GrantLifetime`], and audited again
//!   on every use ([`TenantContext::authorize_use`]).
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tenant_scope::{Actor, ActorId, ActorKind, ActorResolver, AllAgree, HeaderResolver,
//!                    TenantContext, TenantId, TenantLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = TenantLayer::new(
//!     AllAgree::new()
//!         .with(ActorResolver)
//!         .with(HeaderResolver::new(http::HeaderName::from_static("x-tenant-id"))),
//! );
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|req: Request<String>| async move {
//!     let ctx = req.extensions().get::<TenantContext>().expect("resolved by the layer");
//!     Ok::<_, Infallible>(Response::new(ctx.tenant().to_string()))
//! }));
//!
//! let (a, b) = (TenantId::new_random(), TenantId::new_random());
//! let mut req = Request::new(String::new());
//! req.extensions_mut().insert(Actor::new(ActorKind::User, ActorId::new_random(), a));
//! req.headers_mut().insert("x-tenant-id", b.to_string().parse().unwrap());
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::FORBIDDEN); // the header disagrees with the session
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod actor;
mod context;
pub mod cross_tenant;
mod error;
#[cfg(feature = "axum")]
mod extract;
pub mod future;
mod id;
mod layer;
mod rejection;
mod resolve;
pub mod scope;

pub use actor::{Actor, ActorKind};
pub use context::{Origin, TenantContext};
pub use cross_tenant::{
    CrossTenantAudit, CrossTenantAuthority, CrossTenantEvent, GrantLifetime, GrantOutcome,
};
pub use error::{CrossTenantRefusal, IdError, TenantError};
pub use id::{ActorId, TenantId};
pub use layer::{Tenant, TenantLayer};
pub use rejection::{Rejection, TenantRejection};
pub use resolve::{
    ActorResolver, AllAgree, HeaderResolver, RequestHead, StaticDirectory, SubdomainResolver,
    TenantDirectory, TenantResolver,
};

// The README's code blocks compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
