//! A tenant resolved once per request: `TenantLayer` in front of a service, the refusals it
//! answers with, and the task-local scope the handler runs in.
//!
//! ```sh
//! cargo run -p tenant-scope --example tenant_layer
//! ```
#![allow(clippy::print_stdout)]

use std::convert::Infallible;

use http::{HeaderName, Request, Response};
use tenant_scope::{
    Actor, ActorId, ActorKind, ActorResolver, AllAgree, HeaderResolver, TenantContext, TenantId,
    TenantLayer, scope,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tenant_header = HeaderName::from_static("x-tenant-id");
    let layer = TenantLayer::new(
        AllAgree::new()
            .with(ActorResolver)
            .with(HeaderResolver::new(tenant_header.clone())),
    );
    // The handler: the context is in the extensions and the task-local scope is set.
    let app =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|req: Request<String>| async move {
                let from_request = req
                    .extensions()
                    .get::<TenantContext>()
                    .map(TenantContext::tenant);
                let from_scope = scope::current_tenant().ok();
                assert_eq!(from_request, from_scope);
                let tenant = from_scope.map_or_else(String::new, |t| t.to_string());
                Ok::<_, Infallible>(Response::new(format!("serving tenant {tenant}")))
            }));

    let (acme, globex) = (TenantId::new_random(), TenantId::new_random());
    let ada = Actor::new(ActorKind::User, ActorId::new_random(), acme);

    // 1. A signed-in user of acme, no header: served in acme's scope.
    let mut req = Request::new(String::new());
    req.extensions_mut().insert(ada.clone());
    let res = app.clone().oneshot(req).await?;
    println!(
        "signed in, no header      -> {} {}",
        res.status(),
        res.body()
    );

    // 2. The same user, with a header naming another tenant: the sources disagree.
    let mut req = Request::new(String::new());
    req.extensions_mut().insert(ada);
    req.headers_mut()
        .insert(&tenant_header, globex.to_string().parse()?);
    let res = app.clone().oneshot(req).await?;
    println!(
        "header names globex       -> {} {}",
        res.status(),
        res.body()
    );

    // 3. No actor and no header: refused, never defaulted.
    let res = app.clone().oneshot(Request::new(String::new())).await?;
    println!(
        "no tenant at all          -> {} {}",
        res.status(),
        res.body()
    );

    // 4. A malformed header (the nil UUID is refused too).
    let mut req = Request::new(String::new());
    req.headers_mut().insert(
        &tenant_header,
        "00000000-0000-0000-0000-000000000000".parse()?,
    );
    let res = app.oneshot(req).await?;
    println!(
        "nil tenant in the header  -> {} {}",
        res.status(),
        res.body()
    );

    // Outside any scope there is no current tenant; background work carries it explicitly.
    println!("outside a scope           -> {:?}", scope::current_tenant());
    let job = TenantContext::for_job(globex, None, "nightly-report")?;
    let seen = scope::spawn_with(job, async { scope::current_tenant() }).await??;
    println!("a job spawned with a scope -> {seen}");
    Ok(())
}
