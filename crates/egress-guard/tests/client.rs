//! The guarded client against real servers on loopback: redirects to every forbidden class,
//! credential stripping, body cap, slow drip, DNS rebinding and mixed answers through a real DNS
//! server, proxy variables, report mode, and the tower service. Loopback is allowed only by the
//! explicit CIDR exceptions of each test's own policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use egress_guard::{EgressError, EgressPolicy, GuardedClient, HickoryResolver, Mode};
use http::{HeaderMap, HeaderValue, Method};
use support::{dns_server, http_server};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A policy that may reach loopback on `port` only (and nothing else private).
fn loopback_policy(port: u16) -> EgressPolicy {
    EgressPolicy::new("test-loopback")
        .allow_cidr("127.0.0.0/8")
        .unwrap()
        .ports([port])
}

async fn client(policy: EgressPolicy) -> GuardedClient {
    // Names resolve through a DNS server that knows nothing: only IP literals work unless a
    // test starts its own.
    let dns = dns_server(vec![]).await;
    GuardedClient::builder(policy)
        .resolver(Arc::new(
            HickoryResolver::with_nameserver(dns.addr).unwrap(),
        ))
        .build()
        .unwrap()
}

fn code(err: &EgressError) -> &'static str {
    err.reason().map_or("none", |r| r.code())
}

#[tokio::test]
async fn loopback_is_denied_by_default_and_never_contacted() {
    let (addr, hits) = http_server(LOCAL).await;
    let c = client(EgressPolicy::new("default").ports([addr.port()])).await;
    let err = c.get(&format!("http://{addr}/ok")).await.unwrap_err();
    assert_eq!(code(&err), "forbidden_address");
    assert_eq!(hits.count(), 0);
}

#[tokio::test]
async fn allowed_with_an_explicit_exception() {
    let (addr, hits) = http_server(LOCAL).await;
    let c = client(loopback_policy(addr.port())).await;
    let r = c.get(&format!("http://{addr}/ok")).await.unwrap();
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(hits.count(), 1);
}

#[tokio::test]
async fn redirects_to_every_forbidden_class_are_refused_at_the_hop() {
    let (addr, hits) = http_server(LOCAL).await;
    let p = addr.port();
    let c = client(loopback_policy(p)).await;
    let cases = [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://10.0.0.1/", "forbidden_address"),
        ("http://[::ffff:192.168.0.1]/", "forbidden_address"),
        (&format!("http://localhost:{p}/ok"), "forbidden_name"),
        ("http://metadata.google.internal/", "forbidden_name"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("gopher://127.0.0.1:70/", "scheme_not_allowed"),
        (
            &format!("http://127.0.0.1:{}/ok", p.wrapping_add(1)),
            "port_not_allowed",
        ),
    ];
    for status in [301, 302, 303, 307, 308] {
        for (to, want) in &cases {
            let url = format!(
                "http://{addr}/redirect?status={status}&to={}",
                urlencode(to)
            );
            let before = hits.count();
            let err = c
                .send(
                    Method::POST,
                    &url,
                    HeaderMap::new(),
                    Some(Bytes::from_static(b"secret=1")),
                )
                .await
                .unwrap_err();
            match &err {
                EgressError::Denied { hop, .. } => assert_eq!(*hop, 1, "{status} {to}"),
                other => panic!("{status} {to}: {other}"),
            }
            assert_eq!(code(&err), *want, "{status} {to}");
            assert_eq!(
                hits.count(),
                before + 1,
                "only the first hop may be contacted"
            );
        }
    }
}

#[tokio::test]
async fn a_307_keeps_method_and_body_and_a_303_turns_into_get() {
    let (addr, _) = http_server(LOCAL).await;
    let c = client(loopback_policy(addr.port())).await;
    for (status, want) in [
        (307, "POST auth=none body=payload"),
        (308, "POST auth=none body=payload"),
        (303, "GET auth=none body="),
    ] {
        let url = format!("http://{addr}/redirect?status={status}&to=/echo");
        let r = c
            .send(
                Method::POST,
                &url,
                HeaderMap::new(),
                Some(Bytes::from_static(b"payload")),
            )
            .await
            .unwrap();
        assert_eq!(std::str::from_utf8(&r.body).unwrap(), want);
        assert_eq!(r.redirects, 1);
    }
}

#[tokio::test]
async fn credentials_are_dropped_on_cross_origin_redirects_only() {
    let (a, _) = http_server(LOCAL).await;
    let (b, _) = http_server(LOCAL).await;
    let policy = EgressPolicy::new("two-servers")
        .allow_cidr("127.0.0.0/8")
        .unwrap()
        .ports([a.port(), b.port()]);
    let c = client(policy).await;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer s3cr3t"),
    );
    let same = c
        .send(
            Method::GET,
            &format!("http://{a}/redirect?to=/echo"),
            headers.clone(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&same.body).unwrap(),
        "GET auth=Bearer s3cr3t body="
    );
    let cross = format!(
        "http://{a}/redirect?to={}",
        urlencode(&format!("http://{b}/echo"))
    );
    let r = c.send(Method::GET, &cross, headers, None).await.unwrap();
    assert_eq!(std::str::from_utf8(&r.body).unwrap(), "GET auth=none body=");
}

#[tokio::test]
async fn body_cap_and_slow_drip_and_redirect_loops_are_bounded() {
    let (addr, _) = http_server(LOCAL).await;
    let dns = dns_server(vec![]).await;
    let c = GuardedClient::builder(loopback_policy(addr.port()))
        .resolver(Arc::new(
            HickoryResolver::with_nameserver(dns.addr).unwrap(),
        ))
        .body_limit(1024 * 1024)
        .timeouts(
            Duration::from_secs(2),
            Duration::from_secs(5),
            Duration::from_millis(1500),
        )
        .build()
        .unwrap();
    assert!(matches!(
        c.get(&format!("http://{addr}/big")).await,
        Err(EgressError::BodyTooLarge { limit: 1_048_576 })
    ));
    let started = Instant::now();
    assert!(matches!(
        c.get(&format!("http://{addr}/drip")).await,
        Err(EgressError::Timeout)
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        c.get(&format!("http://{addr}/loop")).await,
        Err(EgressError::TooManyRedirects)
    ));
}

#[tokio::test]
async fn names_resolving_to_forbidden_or_mixed_answers_are_denied_before_connecting() {
    let (addr, hits) = http_server(LOCAL).await;
    let port = addr.port();
    let dns = dns_server(vec![
        ("private.test", vec![vec!["10.0.0.5".parse().unwrap()]]),
        ("loop6.test", vec![vec!["::1".parse().unwrap()]]),
        ("meta.test", vec![vec!["169.254.169.254".parse().unwrap()]]),
        (
            "mixed.test",
            vec![vec![
                "127.0.0.1".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
            ]],
        ),
        ("svc.test", vec![vec!["127.0.0.1".parse().unwrap()]]),
    ])
    .await;
    let c = GuardedClient::builder(loopback_policy(port))
        .resolver(Arc::new(
            HickoryResolver::with_nameserver(dns.addr).unwrap(),
        ))
        .build()
        .unwrap();
    for (name, want) in [
        ("private.test", "forbidden_address"),
        ("loop6.test", "forbidden_address"),
        ("meta.test", "metadata"),
        ("mixed.test", "forbidden_address"),
    ] {
        let err = c
            .get(&format!("http://{name}:{port}/ok"))
            .await
            .unwrap_err();
        assert_eq!(code(&err), want, "{name}: {err}");
    }
    assert_eq!(hits.count(), 0, "a denied name was contacted");
    // A name resolving only to the excepted range is reached at the checked address.
    let r = c.get(&format!("http://svc.test:{port}/ok")).await.unwrap();
    assert_eq!(&r.body[..], b"ok");
    assert_eq!(hits.count(), 1);
}

#[tokio::test]
async fn dns_rebinding_cannot_swap_the_checked_address() {
    // 127.0.0.2 stands in for "allowed"; 10.0.0.1 for "internal". The name alternates.
    let (addr, hits) = http_server(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    let port = addr.port();
    let dns = dns_server(vec![(
        "rebind.test",
        vec![
            vec!["127.0.0.2".parse().unwrap()],
            vec!["10.0.0.1".parse().unwrap()],
        ],
    )])
    .await;
    let policy = EgressPolicy::new("rebind")
        .allow_cidr("127.0.0.2/32")
        .unwrap()
        .ports([port]);
    let resolver = Arc::new(HickoryResolver::with_nameserver(dns.addr).unwrap());
    let (mut ok, mut denied) = (0, 0);
    for _ in 0..6 {
        // A fresh client each time, so no pooled connection hides the lookup. (A pooled
        // connection is safe anyway: it goes to an address that was checked when it opened.)
        let c = GuardedClient::builder(policy.clone())
            .resolver(resolver.clone())
            .build()
            .unwrap();
        match c.get(&format!("http://rebind.test:{port}/ok")).await {
            Ok(r) => {
                assert_eq!(&r.body[..], b"ok");
                ok += 1;
            }
            Err(e) => {
                assert_eq!(code(&e), "forbidden_address", "{e}");
                denied += 1;
            }
        }
    }
    assert!(ok > 0 && denied > 0, "ok={ok} denied={denied}");
    // Every request that got through reached the checked address; none went anywhere else.
    assert_eq!(hits.count(), ok);
    assert!(dns.queries.load(std::sync::atomic::Ordering::SeqCst) >= 6);
}

#[tokio::test]
async fn report_mode_lets_policy_denials_through_but_never_the_floor() {
    let (addr, _) = http_server(LOCAL).await;
    let policy = loopback_policy(addr.port())
        .allow_hosts(["only.example"])
        .unwrap()
        .mode(Mode::Report);
    let c = client(policy).await;
    assert!(c.get(&format!("http://{addr}/ok")).await.is_ok());
    let err = c.get("http://169.254.169.254/").await.unwrap_err();
    assert_eq!(code(&err), "metadata");
}

#[tokio::test]
async fn the_client_is_a_tower_service() {
    use tower::ServiceExt;
    let (addr, _) = http_server(LOCAL).await;
    let c = client(loopback_policy(addr.port())).await;
    let req = http::Request::builder()
        .uri(format!("http://{addr}/ok"))
        .body(Bytes::new())
        .unwrap();
    let res = c.clone().oneshot(req).await.unwrap();
    assert_eq!(res.body(), &Bytes::from_static(b"ok"));
    let req = http::Request::builder()
        .uri("http://169.254.169.254/")
        .body(Bytes::new())
        .unwrap();
    assert_eq!(code(&c.oneshot(req).await.unwrap_err()), "metadata");
}

/// Runs in a child process with proxy variables set (see the test below).
#[tokio::test]
async fn proxy_variables_child() {
    if std::env::var_os("EGRESS_GUARD_PROXY_CHILD").is_none() {
        return; // Only meaningful in the child the next test starts.
    }
    let (target, target_hits) = http_server(LOCAL).await;
    let proxy: std::net::SocketAddr = std::env::var("EGRESS_GUARD_PROXY_ADDR")
        .unwrap()
        .parse()
        .unwrap();
    let c = client(
        EgressPolicy::new("p")
            .allow_cidr("127.0.0.0/8")
            .unwrap()
            .ports([target.port(), proxy.port()]),
    )
    .await;
    c.get(&format!("http://{target}/ok")).await.unwrap();
    assert_eq!(target_hits.count(), 1, "the request went through the proxy");
}

#[tokio::test]
async fn proxy_environment_variables_do_not_bypass_the_guard() {
    let (proxy, proxy_hits) = http_server(LOCAL).await;
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["proxy_variables_child", "--exact", "--nocapture"])
        .env("EGRESS_GUARD_PROXY_CHILD", "1")
        .env("EGRESS_GUARD_PROXY_ADDR", proxy.to_string())
        .env("HTTP_PROXY", format!("http://{proxy}"))
        .env("http_proxy", format!("http://{proxy}"))
        .env("ALL_PROXY", format!("http://{proxy}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(proxy_hits.count(), 0, "a request went to the proxy");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_303_after_head_stays_head() {
    let (addr, _) = http_server(LOCAL).await;
    let c = client(loopback_policy(addr.port())).await;
    let url = format!("http://{addr}/redirect?status=303&to=/method");
    let r = c
        .send(Method::HEAD, &url, HeaderMap::new(), None)
        .await
        .unwrap();
    assert_eq!(r.redirects, 1);
    assert_eq!(r.headers["x-method"], "HEAD");
    let r = c
        .send(Method::PUT, &url, HeaderMap::new(), None)
        .await
        .unwrap();
    assert_eq!(r.headers["x-method"], "GET");
}

#[tokio::test]
async fn custom_credential_headers_are_dropped_on_cross_origin_redirects() {
    let (a, _) = http_server(LOCAL).await;
    let (b, _) = http_server(LOCAL).await;
    let policy = EgressPolicy::new("two-servers")
        .allow_cidr("127.0.0.0/8")
        .unwrap()
        .ports([a.port(), b.port()]);
    let dns = dns_server(vec![]).await;
    let c = GuardedClient::builder(policy)
        .resolver(Arc::new(
            HickoryResolver::with_nameserver(dns.addr).unwrap(),
        ))
        .sensitive_headers([http::HeaderName::from_static("x-tool-secret")])
        .build()
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static("k-123"));
    headers.insert("x-tool-secret", HeaderValue::from_static("t-456"));
    let same = c
        .send(
            Method::GET,
            &format!("http://{a}/redirect?to=/headers"),
            headers.clone(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&same.body).unwrap(),
        "x-api-key=k-123 x-tool-secret=t-456"
    );
    let cross = format!(
        "http://{a}/redirect?to={}",
        urlencode(&format!("http://{b}/headers"))
    );
    let r = c.send(Method::GET, &cross, headers, None).await.unwrap();
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        "x-api-key=none x-tool-secret=none"
    );
}

#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<egress_guard::Decision>>);

impl egress_guard::DecisionHook for Recorder {
    fn record(&self, decision: &egress_guard::Decision) {
        self.0.lock().unwrap().push(decision.clone());
    }
}

#[tokio::test]
async fn one_decision_per_hop_with_the_requests_scheme_port_addresses_and_caller() {
    let (addr, hits) = http_server(LOCAL).await;
    let port = addr.port();
    let dns = dns_server(vec![
        ("svc.test", vec![vec!["127.0.0.1".parse().unwrap()]]),
        (
            "private.test",
            vec![vec![
                "203.0.113.9".parse().unwrap(),
                "10.0.0.5".parse().unwrap(),
            ]],
        ),
    ])
    .await;
    let recorder = Arc::new(Recorder::default());
    let counters = Arc::new(egress_guard::DecisionCounters::default());
    let policy = loopback_policy(port)
        .with_hook(recorder.clone())
        .with_hook(counters.clone());
    let c = GuardedClient::builder(policy)
        .resolver(Arc::new(
            HickoryResolver::with_nameserver(dns.addr).unwrap(),
        ))
        .caller("agent:researcher/tool:fetch")
        .build()
        .unwrap();
    let target = urlencode(&format!("http://private.test:{port}/ok"));
    let err = c
        .get(&format!("http://svc.test:{port}/redirect?to={target}"))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "forbidden_address");
    assert_eq!(hits.count(), 1, "only the first hop was contacted");
    let decisions = recorder.0.lock().unwrap().clone();
    assert_eq!(decisions.len(), 2, "{decisions:#?}");
    let (first, second) = (&decisions[0], &decisions[1]);
    assert!(first.allowed);
    assert_eq!(first.hop, Some(0));
    assert_eq!(first.addresses, vec![LOCAL]);
    assert!(!second.allowed);
    assert_eq!(second.hop, Some(1));
    let t = second.target.as_ref().unwrap();
    assert_eq!((t.scheme(), t.port()), ("http", port));
    assert_eq!(second.addresses.len(), 2);
    // The first forbidden answer is named (TEST-NET-3 is special-purpose too).
    assert_eq!(second.address, Some("203.0.113.9".parse().unwrap()));
    for d in &decisions {
        assert_eq!(d.caller.as_deref(), Some("agent:researcher/tool:fetch"));
    }
    // Counted per request hop, not per resolved address.
    let counts = counters.snapshot();
    assert_eq!(counts.get("allowed"), Some(&1));
    assert_eq!(counts.get("forbidden_address"), Some(&1));
    assert_eq!(counts.values().sum::<u64>(), 2);
}
