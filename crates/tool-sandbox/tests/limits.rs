//! Resource limits and egress at the gate: timeouts, output caps, per-tenant fairness under a
//! flood, and network tools that only ever get an egress-guarded client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use egress_guard::{EgressPolicy, GuardedClient, NameResolver};
use serde_json::json;
use tenant_scope::{Actor, ActorId, ActorKind, TenantId};
use tool_sandbox::{
    AgentPolicy, CallLimits, DenyReason, Effect, Registry, Submission, ToolError, ToolLimits,
    ToolOutput, ToolSpec, tool_fn,
};
use uuid::Uuid;

/// Names for the test, answered locally: nothing leaves the machine.
struct Names;

impl NameResolver for Names {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, std::io::Error>> + Send + 'a>> {
        let answer: Vec<IpAddr> = match host {
            "public.test" => vec![Ipv4Addr::LOCALHOST.into()],
            "metadata.test" => vec![Ipv4Addr::new(169, 254, 169, 254).into()],
            "intranet.test" => vec![Ipv4Addr::new(10, 1, 2, 3).into()],
            "mixed.test" => vec![
                Ipv4Addr::LOCALHOST.into(),
                Ipv4Addr::new(10, 0, 0, 1).into(),
            ],
            _ => Vec::new(),
        };
        Box::pin(async move {
            if answer.is_empty() {
                Err(std::io::Error::other("no such name"))
            } else {
                Ok(answer)
            }
        })
    }
}

/// The network tool: `{"url"}` in, the body out.
fn fetch_url_spec() -> ToolSpec {
    ToolSpec::new("fetch_url", 1, Effect::ReadOnly)
        .unwrap()
        .network(true)
        .schema(json!({
            "type": "object", "additionalProperties": false, "required": ["url"],
            "properties": {"url": {"type": "string", "maxLength": 2048}}
        }))
}

fn net_registry(ledger: &Arc<Ledger>) -> Registry {
    let fetch_ledger = ledger.clone();
    Registry::builder()
        .tool(
            fetch_url_spec(),
            tool_fn(move |ctx, args| {
                let ledger = fetch_ledger.clone();
                async move {
                    ledger.runs.fetch_add(1, Ordering::SeqCst);
                    let url = args["url"].as_str().unwrap_or_default().to_owned();
                    let response = ctx.http()?.get(&url).await?;
                    Ok(ToolOutput::text(String::from_utf8_lossy(&response.body)))
                }
            }),
        )
        .tool(
            ToolSpec::new("offline", 1, Effect::ReadOnly).unwrap(),
            tool_fn(|ctx, _| async move {
                ctx.http()?;
                Ok(ToolOutput::text("unreachable"))
            }),
        )
        .tool(
            ToolSpec::new("big", 1, Effect::ReadOnly)
                .unwrap()
                .limits(ToolLimits::default().with_output_bytes(64 * 1024)),
            tool_fn(|_, _| async { Ok(ToolOutput::text("é".repeat(4 * 1024 * 1024))) }),
        )
        .tool(
            ToolSpec::new("hang", 1, Effect::ReadOnly)
                .unwrap()
                .limits(ToolLimits::default().with_timeout(Duration::from_millis(200))),
            tool_fn(|_, _| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(ToolOutput::text("never"))
            }),
        )
        .tool(
            ToolSpec::new("slow", 1, Effect::ReadOnly).unwrap(),
            tool_fn(|_, _| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(ToolOutput::text("slow done"))
            }),
        )
        .build()
        .unwrap()
}

fn agent(tenant: TenantId) -> Arc<AgentPolicy> {
    Arc::new(
        AgentPolicy::new(Actor::new(ActorKind::Agent, ActorId::new_random(), tenant))
            .unwrap()
            .allow_tools(["fetch_url", "offline", "big", "hang", "slow"])
            .unwrap(),
    )
}

async fn loopback_server(hits: Arc<AtomicUsize>) -> SocketAddr {
    let app = axum::Router::new().fallback(move || {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            "hello from loopback"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn a_network_tool_cannot_reach_metadata_or_private_ranges_and_its_refusals_are_audited() {
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = loopback_server(hits.clone()).await;
    // The operator allows exactly the loopback test server (as a stand-in for the internet);
    // the floor still forbids metadata and private ranges.
    let client = GuardedClient::builder(
        EgressPolicy::new("agent-tools")
            .ports([80, 443, addr.port()])
            .allow_cidr("127.0.0.1/32")
            .unwrap(),
    )
    .resolver(Arc::new(Names))
    .caller("agent-tools")
    .build()
    .unwrap();
    let f = fixture_of(net_registry, |b| b.egress(client)).await;
    let policy = agent(f.tenant);
    let mut t = turn(&policy, "fetch pages");
    let port = addr.port();
    for url in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_owned(),
        format!("http://metadata.test:{port}/"),
        "http://10.0.0.8/".to_owned(),
        "http://10.255.255.1/admin".to_owned(),
        format!("http://intranet.test:{port}/"),
        format!("http://mixed.test:{port}/"),
        "http://[::ffff:169.254.169.254]/".to_owned(),
        "http://0xA9FEA9FE/".to_owned(),
        "http://0251.0376.0251.0376/".to_owned(),
    ] {
        let s = f
            .gate
            .submit(&mut t, call("c", "fetch_url", json!({"url": url})))
            .await
            .unwrap();
        let Submission::Ran { run, .. } = s else {
            panic!("{url}: {s:?}")
        };
        assert!(
            matches!(
                run.result,
                Err(ToolError::Egress(egress_guard::EgressError::Denied { .. }))
            ),
            "{url}: {:?}",
            run.result
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request reached any server"
    );
    // The positive control: the same tool, the same client, an allowed destination.
    let ok = f
        .gate
        .submit(
            &mut t,
            call(
                "c",
                "fetch_url",
                json!({"url": format!("http://public.test:{port}/x")}),
            ),
        )
        .await
        .unwrap();
    let Submission::Ran { run, .. } = ok else {
        panic!()
    };
    assert_eq!(
        run.result.unwrap().into_untrusted_value(),
        "hello from loopback"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let events = audit_events(&f.db, f.tenant).await;
    let egress: Vec<_> = events
        .iter()
        .filter(|(a, _, _)| a == "egress.denied")
        .collect();
    assert_eq!(egress.len(), 9);
    assert!(egress.iter().all(|(_, _, e)| e["actor"]["kind"] == "agent"));
    assert!(
        egress
            .iter()
            .any(|(_, _, e)| e["outcome"]["reason"] == "metadata")
    );
    assert_eq!(
        events
            .iter()
            .filter(|(a, _, _)| a == "agent.tool_failed")
            .count(),
        9
    );
}

#[tokio::test]
async fn a_tool_not_declared_as_networked_gets_no_client() {
    let client = GuardedClient::builder(EgressPolicy::new("p"))
        .resolver(Arc::new(Names))
        .build()
        .unwrap();
    let f = fixture_of(net_registry, |b| b.egress(client)).await;
    let policy = agent(f.tenant);
    let mut t = turn(&policy, "x");
    let Submission::Ran { run, .. } = f
        .gate
        .submit(&mut t, call("c", "offline", json!({})))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(
        matches!(run.result, Err(ToolError::NoNetwork)),
        "{:?}",
        run.result
    );
}

#[tokio::test]
async fn output_is_cut_at_the_cap_on_a_character_boundary_and_marked_truncated() {
    let f = fixture_of(net_registry, |b| b).await;
    let policy = agent(f.tenant);
    let mut t = turn(&policy, "x");
    let Submission::Ran { run, for_model } = f
        .gate
        .submit(&mut t, call("c", "big", json!({})))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(run.truncated);
    let text = run.result.unwrap().into_untrusted_value();
    assert!(text.len() <= 64 * 1024 && text.len() > 64 * 1024 - 4);
    assert!(for_model.len() < 70 * 1024);
}

#[tokio::test]
async fn a_hanging_tool_is_cancelled_at_its_wall_clock_limit_and_the_failure_is_audited() {
    let f = fixture_of(net_registry, |b| b).await;
    let policy = agent(f.tenant);
    let mut t = turn(&policy, "x");
    let started = Instant::now();
    let Submission::Ran { run, .. } = f
        .gate
        .submit(&mut t, call("c", "hang", json!({})))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(matches!(run.result, Err(ToolError::TimedOut)));
    assert!(started.elapsed() < Duration::from_secs(3));
    let events = audit_events(&f.db, f.tenant).await;
    let failed = events
        .iter()
        .find(|(a, _, _)| a == "agent.tool_failed")
        .unwrap();
    assert_eq!(failed.2["outcome"]["reason"], "timed_out");
}

#[tokio::test]
async fn a_thousand_parallel_calls_from_one_tenant_do_not_block_another_tenants_call() {
    let f = fixture_of(net_registry, |b| {
        b.limits(
            CallLimits::default()
                .with_per_agent_concurrency(4)
                .with_per_tenant_concurrency(4)
                .with_per_agent_rate(1e6)
                .with_per_agent_burst(1e6)
                .with_per_tenant_rate(1e6)
                .with_per_tenant_burst(1e6)
                .with_queue_wait(Duration::from_secs(60)),
        )
    })
    .await;
    let flooder = agent(f.tenant);
    let done = Arc::new(AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let gate = f.gate.clone();
        let policy = flooder.clone();
        let done = done.clone();
        flood.spawn(async move {
            let requester = Actor::new(
                ActorKind::User,
                ActorId::new_random(),
                policy.agent().tenant(),
            );
            let mut t =
                tool_sandbox::Turn::new(policy, Uuid::new_v4(), &requester, "flood").unwrap();
            let _ = gate
                .submit(&mut t, call(&format!("c{i}"), "slow", json!({})))
                .await;
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = agent(TenantId::new_random());
    let mut t = turn(&other, "one call");
    let started = Instant::now();
    let s = f
        .gate
        .submit(&mut t, call("b1", "slow", json!({})))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let Submission::Ran { run, .. } = s else {
        panic!("{s:?}")
    };
    assert!(run.result.is_ok());
    assert!(
        elapsed < Duration::from_secs(3),
        "tenant B waited {elapsed:?}"
    );
    let finished = done.load(Ordering::SeqCst);
    assert!(
        finished < 900,
        "the flood was still queued when B finished ({finished} done)"
    );
    flood.abort_all();
}

#[tokio::test]
async fn a_rate_limited_call_is_denied_and_audited() {
    let f = fixture_of(net_registry, |b| {
        b.limits(
            CallLimits::default()
                .with_per_agent_rate(0.001)
                .with_per_agent_burst(2.0),
        )
    })
    .await;
    let policy = agent(f.tenant);
    let mut t = turn(&policy, "x");
    for _ in 0..2 {
        let s = f
            .gate
            .submit(&mut t, call("c", "big", json!({})))
            .await
            .unwrap();
        assert!(matches!(s, Submission::Ran { .. }));
    }
    let s = f
        .gate
        .submit(&mut t, call("c", "big", json!({})))
        .await
        .unwrap();
    assert!(
        matches!(s, Submission::Denied(DenyReason::Limited("agent_rate"))),
        "{s:?}"
    );
    let events = audit_events(&f.db, f.tenant).await;
    assert!(events.iter().any(
        |(a, _, e)| a == "agent.tool_denied" && e["outcome"]["reason"] == "limited:agent_rate"
    ));
}

#[tokio::test]
async fn a_noisy_agent_over_its_own_limit_does_not_starve_a_quiet_agent_of_the_same_tenant() {
    let f = fixture_with(|b| {
        b.limits(
            CallLimits::default()
                .with_per_agent_rate(0.001)
                .with_per_agent_burst(3.0)
                .with_per_tenant_rate(0.001)
                .with_per_tenant_burst(5.0),
        )
    })
    .await;
    let noisy = agent_policy(f.tenant);
    let quiet = agent_policy(f.tenant);
    let search = |i: usize| call(&format!("c{i}"), "search_notes", json!({"query": "q"}));
    let mut t = turn(&noisy, "search");
    for i in 0..3 {
        let s = f.gate.submit(&mut t, search(i)).await.unwrap();
        assert!(matches!(s, Submission::Ran { .. }), "{s:?}");
    }
    // The noisy agent keeps calling past its own limit: every call is refused...
    for i in 3..40 {
        let s = f.gate.submit(&mut t, search(i)).await.unwrap();
        assert!(
            matches!(s, Submission::Denied(DenyReason::Limited("agent_rate"))),
            "{s:?}"
        );
    }
    // ...and none of them spent the tenant's tokens: the quiet agent gets the two left.
    let mut q = turn(&quiet, "search");
    for i in 0..2 {
        let s = f.gate.submit(&mut q, search(i)).await.unwrap();
        assert!(matches!(s, Submission::Ran { .. }), "quiet call {i}: {s:?}");
    }
    // The tenant's own limit still holds.
    let s = f.gate.submit(&mut q, search(2)).await.unwrap();
    assert!(
        matches!(s, Submission::Denied(DenyReason::Limited("tenant_rate"))),
        "{s:?}"
    );
    assert_eq!(f.ledger.runs(), 5);
    let events = audit_events(&f.db, f.tenant).await;
    let refused = |code: &str| {
        events
            .iter()
            .filter(|(a, _, e)| a == "agent.tool_denied" && e["outcome"]["reason"] == code)
            .count()
    };
    assert_eq!(refused("limited:agent_rate"), 37);
    assert_eq!(refused("limited:tenant_rate"), 1);
}

/// A subprocess tool whose context decides its network access (Linux: elsewhere subprocess tools
/// refuse to run, see `tests/process_elsewhere.rs`): the command it builds through
/// `ToolContext::command` carries the tool's declaration into seccomp, and for a network tool the
/// gate's egress proxy. The probe connects straight to the listener, then through the proxy
/// named in its environment (CONNECT).
#[cfg(target_os = "linux")]
fn probe_registry(port: u16) -> Registry {
    let probe = move || {
        tool_fn(move |ctx, _| async move {
            let out = ctx
                .command("/bin/bash")
                .args([
                    "-c",
                    &format!(
                        "(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo connected\n\
                         [ -n \"$https_proxy\" ] || exit 0\n\
                         p=${{https_proxy#http://}}\n\
                         exec 4<>/dev/tcp/${{p%:*}}/${{p##*:}}\n\
                         printf 'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n' >&4\n\
                         read -r line <&4 && echo \"proxy ${{line%?}}\"\n\
                         exec 5<>/dev/tcp/${{p%:*}}/${{p##*:}}\n\
                         printf 'CONNECT 169.254.169.254:80 HTTP/1.1\\r\\n\\r\\n' >&5\n\
                         read -r line <&5 && echo \"metadata ${{line%?}}\""
                    ),
                ])
                .run()
                .await?;
            Ok(ToolOutput::text(format!(
                "{:?} {}",
                out.exit,
                String::from_utf8_lossy(&out.stdout).trim()
            )))
        })
    };
    Registry::builder()
        .tool(
            ToolSpec::new("offline_probe", 1, Effect::ReadOnly).unwrap(),
            probe(),
        )
        .tool(
            ToolSpec::new("online_probe", 1, Effect::ReadOnly)
                .unwrap()
                .network(true),
            probe(),
        )
        .build()
        .unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_subprocess_of_a_non_network_tool_cannot_open_an_inet_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let proxy = egress_guard::EgressProxy::new(
        EgressPolicy::new("probe")
            .allow_cidr("127.0.0.1/32")
            .unwrap()
            .ports([port]),
        Arc::new(Names),
    );
    let f = fixture_of(|_| probe_registry(port), |b| b.egress_proxy(proxy)).await;
    let policy = Arc::new(
        AgentPolicy::new(Actor::new(
            ActorKind::Agent,
            ActorId::new_random(),
            f.tenant,
        ))
        .unwrap()
        .allow_tools(["offline_probe", "online_probe"])
        .unwrap(),
    );
    let mut t = turn(&policy, "probe");
    let Submission::Ran { run, .. } = f
        .gate
        .submit(&mut t, call("c1", "offline_probe", json!({})))
        .await
        .unwrap()
    else {
        panic!()
    };
    let text = run.result.unwrap().into_untrusted_value();
    assert!(!text.contains("connected"), "{text}");
    assert!(
        listener.accept().is_err(),
        "no connection reached the listener"
    );
    // The control: the same probe declared as a network tool reaches the listener, through
    // the gate's egress proxy only (its own network namespace has no route to the host).
    let Submission::Ran { run, .. } = f
        .gate
        .submit(&mut t, call("c2", "online_probe", json!({})))
        .await
        .unwrap()
    else {
        panic!()
    };
    let text = run.result.unwrap().into_untrusted_value();
    assert!(!text.contains("connected"), "{text}");
    assert!(
        text.contains("proxy HTTP/1.1 200 Connection Established"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(listener.accept().is_ok());
    assert!(listener.accept().is_err(), "one connection: the proxy's");
    // The proxy refused the metadata address, and the refusal is audited as the in-process
    // client's are: `egress.denied`, the agent as actor, the tool and call named.
    assert!(text.contains("metadata HTTP/1.1 403"), "{text}");
    let events = audit_events(&f.db, f.tenant).await;
    let denied: Vec<_> = events
        .iter()
        .filter(|(a, _, _)| a == "egress.denied")
        .collect();
    assert_eq!(denied.len(), 1, "{events:?}");
    let (_, _, record) = denied[0];
    assert_eq!(record["actor"]["kind"], "agent");
    assert_eq!(record["outcome"]["reason"], "metadata");
    assert_eq!(record["metadata"]["via"], "proxy");
    assert_eq!(record["metadata"]["tool"], "online_probe");
    assert_eq!(record["metadata"]["call_id"], "c2");
}

/// A server that accepts connections and never answers.
async fn hanging_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// A server that answers the headers at once, then trickles the body one byte every 100 ms.
async fn trickling_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                    .await;
                for _ in 0..100_000 {
                    if socket.write_all(b"x").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_hanging_or_trickling_outbound_server_times_the_call_out_and_the_turn_goes_on() {
    let (hang, trickle) = (hanging_server().await, trickling_server().await);
    let ok = loopback_server(Arc::new(AtomicUsize::new(0))).await;
    let client = GuardedClient::builder(
        EgressPolicy::new("agent-tools")
            .ports([hang.port(), trickle.port(), ok.port()])
            .allow_cidr("127.0.0.1/32")
            .unwrap(),
    )
    .resolver(Arc::new(Names))
    .caller("agent-tools")
    .build()
    .unwrap();
    // A fetch tool with a short wall-clock limit, as an operator would give a network tool.
    let registry = |_: &Arc<Ledger>| {
        Registry::builder()
            .tool(
                fetch_url_spec()
                    .limits(ToolLimits::default().with_timeout(Duration::from_millis(400))),
                tool_fn(|ctx, args| async move {
                    let url = args["url"].as_str().unwrap_or_default().to_owned();
                    let response = ctx.http()?.get(&url).await?;
                    Ok(ToolOutput::text(String::from_utf8_lossy(&response.body)))
                }),
            )
            .build()
            .unwrap()
    };
    let f = fixture_of(registry, |b| b.egress(client)).await;
    let policy = Arc::new(
        AgentPolicy::new(Actor::new(
            ActorKind::Agent,
            ActorId::new_random(),
            f.tenant,
        ))
        .unwrap()
        .allow_tools(["fetch_url"])
        .unwrap(),
    );
    let mut t = turn(&policy, "fetch the pages");
    let fetch = |addr: SocketAddr| {
        call(
            "c",
            "fetch_url",
            json!({"url": format!("http://public.test:{}/page", addr.port())}),
        )
    };
    for addr in [hang, trickle] {
        let started = Instant::now();
        let s = f.gate.submit(&mut t, fetch(addr)).await.unwrap();
        let Submission::Ran { run, for_model } = s else {
            panic!("{s:?}")
        };
        assert!(
            matches!(run.result, Err(ToolError::TimedOut)),
            "{:?}",
            run.result
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            !for_model.contains('x'),
            "no partial body reaches the model"
        );
    }
    // The same turn goes on: the next call runs and answers.
    let s = f.gate.submit(&mut t, fetch(ok)).await.unwrap();
    let Submission::Ran { run, .. } = s else {
        panic!("{s:?}")
    };
    assert_eq!(
        run.result.unwrap().into_untrusted_value(),
        "hello from loopback"
    );
    let events = audit_events(&f.db, f.tenant).await;
    let timed_out = events
        .iter()
        .filter(|(a, _, e)| a == "agent.tool_failed" && e["outcome"]["reason"] == "timed_out")
        .count();
    assert_eq!(timed_out, 2);
}
