//! The egress proxy against real servers on loopback: CONNECT and absolute-form requests that
//! the policy allows go through; denied destinations get 403 and are never contacted (a
//! second listener counts its accepts, with a positive control that the same listener is
//! counted when allowed); malformed requests get 400; every decision reaches the hook.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_guard::{Decision, DecisionHook, EgressPolicy, EgressProxy, HickoryResolver};
use support::{dns_server, http_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[derive(Default)]
struct Recorder(Mutex<Vec<Decision>>);

impl DecisionHook for Recorder {
    fn record(&self, decision: &Decision) {
        self.0.lock().unwrap().push(decision.clone());
    }
}

impl Recorder {
    fn codes(&self) -> Vec<(bool, &'static str)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|d| (d.allowed, d.reason.code()))
            .collect()
    }
}

/// A listener that only counts the connections it accepts.
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepts)
}

struct Proxy {
    addr: SocketAddr,
    hook: Arc<Recorder>,
    _handle: egress_guard::ProxyHandle,
}

async fn proxy_with(
    policy: EgressPolicy,
    dns: Vec<(&'static str, Vec<Vec<IpAddr>>)>,
    tune: impl FnOnce(EgressProxy) -> EgressProxy,
) -> Proxy {
    let hook = Arc::new(Recorder::default());
    let dns = dns_server(dns).await;
    let resolver = Arc::new(HickoryResolver::with_nameserver(dns.addr).unwrap());
    let proxy = tune(EgressProxy::new(policy.with_hook(hook.clone()), resolver).caller("tool"));
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    Proxy {
        addr,
        hook,
        _handle: proxy.spawn(listener),
    }
}

async fn proxy(policy: EgressPolicy) -> Proxy {
    proxy_with(policy, vec![], |p| p).await
}

fn loopback(ports: impl IntoIterator<Item = u16>) -> EgressPolicy {
    EgressPolicy::new("proxy-test")
        .allow_cidr("127.0.0.1/32")
        .unwrap()
        .ports(ports)
}

/// Sends `request` to the proxy and reads until it closes.
async fn exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a CONNECT tunnel and, once established, sends a GET through it.
async fn connect_and_get(proxy: SocketAddr, authority: &str) -> (String, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 200 ") {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        return (head, String::from_utf8_lossy(&rest).into_owned());
    }
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    (head, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn connect_tunnel_to_an_allowed_destination() {
    let (server, hits) = http_server(LOCAL).await;
    let p = proxy(loopback([server.port()])).await;
    let (head, answer) = connect_and_get(p.addr, &server.to_string()).await;
    assert_eq!(head, "HTTP/1.1 200 Connection Established\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert_eq!(hits.count(), 1);
    assert_eq!(p.hook.codes(), vec![(true, "allowed")]);
}

/// An origin that records the request head it receives and answers `200 ok`.
async fn recording_origin() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&got).into_owned();
            // A body announced by Content-Length is read too.
            let length: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .map_or(0, |v| v.trim().parse().unwrap());
            let body_start = text.find("\r\n\r\n").unwrap() + 4;
            while got.len() < body_start + length {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&got).into_owned());
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = stream.shutdown().await;
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn absolute_form_request_to_an_allowed_destination() {
    let (server, hits) = http_server(LOCAL).await;
    let p = proxy(loopback([server.port()])).await;
    let answer = exchange(
        p.addr,
        format!("GET http://{server}/ok HTTP/1.1\r\nHost: {server}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert_eq!(hits.count(), 1);

    // A body with Content-Length is forwarded.
    let answer = exchange(
        p.addr,
        format!(
            "POST http://{server}/echo HTTP/1.1\r\nHost: {server}\r\nContent-Length: 5\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("body=hello"), "{answer}");
    assert_eq!(p.hook.codes(), vec![(true, "allowed"), (true, "allowed")]);
}

#[tokio::test]
async fn the_origin_gets_origin_form_without_hop_by_hop_headers_or_proxy_credentials() {
    let (origin, seen) = recording_origin().await;
    let p = proxy(loopback([origin.port()])).await;
    let answer = exchange(
        p.addr,
        format!(
            "PUT http://{origin}/p?q=1 HTTP/1.1\r\nHost: elsewhere.example\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Kept: yes\r\nContent-Length: 3\r\n\r\nabcEXTRA"
        )
        .as_bytes(),
    )
    .await;
    assert!(answer.ends_with("ok"), "{answer}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![format!(
            "PUT /p?q=1 HTTP/1.1\r\nHost: {origin}\r\nx-kept: yes\r\ncontent-length: 3\r\nConnection: close\r\n\r\nabc"
        )]
    );
}

#[tokio::test]
async fn a_name_is_resolved_once_and_every_answer_checked() {
    let (server, hits) = http_server(LOCAL).await;
    let p = proxy_with(
        loopback([server.port()]),
        vec![
            ("svc.test", vec![vec![LOCAL]]),
            ("mixed.test", vec![vec![LOCAL, "10.0.0.1".parse().unwrap()]]),
        ],
        |p| p,
    )
    .await;
    let port = server.port();
    let answer = exchange(
        p.addr,
        format!("GET http://svc.test:{port}/ok HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.ends_with("ok"), "{answer}");
    assert_eq!(hits.count(), 1);
    let (head, _) = connect_and_get(p.addr, &format!("mixed.test:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(hits.count(), 1);
    assert_eq!(
        p.hook.codes(),
        vec![(true, "allowed"), (false, "forbidden_address")]
    );
}

#[tokio::test]
async fn denied_destinations_get_403_and_are_never_contacted() {
    let (server, _) = http_server(LOCAL).await;
    let (counted, accepts) = counting_listener().await;

    // Positive control: the counting listener is reached when the policy allows its port.
    let allowed = proxy(loopback([counted.port()])).await;
    let mut s = TcpStream::connect(allowed.addr).await.unwrap();
    s.write_all(format!("CONNECT {counted} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
    assert_eq!(accepts.load(Ordering::SeqCst), 1);

    // A loopback port the policy does not list.
    let p = proxy(loopback([server.port()])).await;
    let (head, body) = connect_and_get(p.addr, &counted.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 403 Forbidden"), "{head}");
    assert_eq!(body, "egress denied: port_not_allowed\n");
    let answer = exchange(
        p.addr,
        format!("GET http://{counted}/ HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");

    // Loopback without the policy's exception.
    let p2 = proxy(EgressPolicy::new("no-loopback").ports([counted.port()])).await;
    let (head, body) = connect_and_get(p2.addr, &counted.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(body, "egress denied: forbidden_address\n");

    // A host not on the allowlist (its address would be allowed).
    let p3 = proxy_with(
        loopback([counted.port()])
            .allow_hosts(["api.example"])
            .unwrap(),
        vec![("other.test", vec![vec![LOCAL]])],
        |p| p,
    )
    .await;
    let (head, body) = connect_and_get(p3.addr, &format!("other.test:{}", counted.port())).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(body, "egress denied: host_not_allowed\n");

    // Cloud metadata, even with an exception covering it, and names that are never public.
    let p4 = proxy(
        EgressPolicy::new("meta")
            .allow_cidr("169.254.0.0/16")
            .unwrap(),
    )
    .await;
    let (head, body) = connect_and_get(p4.addr, "169.254.169.254:80").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(body, "egress denied: metadata\n");
    let answer = exchange(
        p4.addr,
        b"GET http://metadata.google.internal/computeMetadata/v1/ HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(
        answer.ends_with("egress denied: forbidden_name\n"),
        "{answer}"
    );

    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "only the positive control"
    );
    assert_eq!(
        p.hook.codes(),
        vec![(false, "port_not_allowed"), (false, "port_not_allowed")]
    );
    assert_eq!(p2.hook.codes(), vec![(false, "forbidden_address")]);
    assert_eq!(p3.hook.codes(), vec![(false, "host_not_allowed")]);
    assert_eq!(
        p4.hook.codes(),
        vec![(false, "metadata"), (false, "forbidden_name")]
    );
    let denial = p.hook.0.lock().unwrap()[0].clone();
    assert_eq!(denial.caller.as_deref(), Some("tool"));
    assert_eq!(denial.policy, "proxy-test");
}

#[tokio::test]
async fn malformed_requests_get_400_and_no_decision() {
    let (server, hits) = http_server(LOCAL).await;
    let p = proxy(loopback([server.port()])).await;
    let long = format!(
        "GET http://{server}/ok HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    for request in [
        "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        format!("GET http://{server}/ok HTTP/1.1\nHost: x\n\n\r\n\r\n"),
        format!("GET http://{server}/ok HTTP/1.1\r\n folded\r\n\r\n"),
        format!("GET https://{server}/ok HTTP/1.1\r\n\r\n"),
        format!(
            "POST http://{server}/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        "CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n".to_owned(),
        "GARBAGE\r\n\r\n".to_owned(),
        long,
    ] {
        let answer = exchange(p.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{request:?}: {answer}");
    }
    let answer = exchange(
        p.addr,
        format!("TRACE http://{server}/ok HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    assert_eq!(hits.count(), 0);
    assert!(p.hook.codes().is_empty());
    // Positive control: the same proxy serves a well-formed request.
    let answer = exchange(
        p.addr,
        format!("GET http://{server}/ok HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.ends_with("ok"), "{answer}");
}

#[tokio::test]
async fn idle_connections_are_closed_and_connections_are_capped() {
    let (server, _) = http_server(LOCAL).await;
    let p = proxy_with(loopback([server.port()]), vec![], |p| {
        p.idle_timeout(Duration::from_millis(300))
            .max_connections(1)
    })
    .await;
    // One silent connection holds the only slot: the next is refused with 503.
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = exchange(p.addr, b"GET http://127.0.0.1/ HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    // The silent connection is closed after the idle timeout...
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...which frees the slot.
    let answer = exchange(
        p.addr,
        format!("GET http://{server}/ok HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.ends_with("ok"), "{answer}");
}
