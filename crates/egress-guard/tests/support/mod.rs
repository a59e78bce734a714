//! Loopback servers for the client tests: an HTTP server with attack routes and a small DNS
//! server whose answers each test scripts. Nothing here talks to anything but loopback.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

/// Requests the HTTP server has received.
#[derive(Clone, Default)]
pub struct Hits(pub Arc<AtomicUsize>);

impl Hits {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Starts the attack server on `ip` (a loopback address) and returns its address.
pub async fn http_server(ip: IpAddr) -> (SocketAddr, Hits) {
    let hits = Hits::default();
    let app = Router::new()
        .route("/ok", any(|| async { "ok" }))
        .route("/redirect", any(redirect))
        .route("/echo", any(echo))
        .route("/headers", any(echo_headers))
        .route(
            "/method",
            any(|method: Method| async move { ([("x-method", method.to_string())], "") }),
        )
        .route("/big", any(|| async { vec![b'x'; 2 * 1024 * 1024] }))
        .route("/drip", any(drip))
        .route(
            "/loop",
            any(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
        )
        .layer(axum::middleware::from_fn_with_state(hits.clone(), count))
        .with_state(());
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

async fn count(
    State(hits): State<Hits>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    hits.0.fetch_add(1, Ordering::SeqCst);
    next.run(req).await
}

/// `/redirect?to=URL&status=302`
async fn redirect(Query(q): Query<HashMap<String, String>>) -> Response {
    let status = q.get("status").and_then(|s| s.parse().ok()).unwrap_or(302);
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert(header::LOCATION, q["to"].parse().unwrap());
    r
}

/// Echoes the method, the Authorization header and the body.
async fn echo(method: Method, headers: HeaderMap, body: String) -> impl IntoResponse {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
    format!("{method} auth={auth} body={body}")
}

/// Echoes the custom credential headers the tests send.
async fn echo_headers(headers: HeaderMap) -> impl IntoResponse {
    let get = |name: &str| {
        headers
            .get(name)
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned())
    };
    format!(
        "x-api-key={} x-tool-secret={}",
        get("x-api-key"),
        get("x-tool-secret")
    )
}

/// One byte every 300 ms, for a minute.
async fn drip() -> Response {
    let stream = futures::stream::unfold(0u32, |n| async move {
        if n >= 200 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b".")),
            n + 1,
        ))
    });
    Response::new(Body::from_stream(stream))
}

/// A DNS server on loopback answering A and AAAA queries from a script: each name maps to a
/// list of answer sets, served in rotation (so a test can make a name rebind between queries).
pub struct Dns {
    pub addr: SocketAddr,
    pub queries: Arc<AtomicUsize>,
}

/// Per name: the answer sets and which one is next.
type Script = HashMap<String, (Vec<Vec<IpAddr>>, usize)>;

pub async fn dns_server(script: Vec<(&'static str, Vec<Vec<IpAddr>>)>) -> Dns {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let q2 = queries.clone();
    let script: Script = script
        .into_iter()
        .map(|(n, sets)| (n.to_owned(), (sets, 0)))
        .collect();
    let script = Arc::new(Mutex::new(script));
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Some(reply) = answer(&buf[..len], &script, &q2) else {
                continue;
            };
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    Dns { addr, queries }
}

fn answer(query: &[u8], script: &Mutex<Script>, queries: &AtomicUsize) -> Option<Vec<u8>> {
    // Header (12 bytes), then one question: labels, type, class.
    let mut i = 12;
    let mut labels = Vec::new();
    while *query.get(i)? != 0 {
        let len = usize::from(query[i]);
        labels.push(
            std::str::from_utf8(query.get(i + 1..i + 1 + len)?)
                .ok()?
                .to_ascii_lowercase(),
        );
        i += 1 + len;
    }
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let question_end = i + 5;
    let name = labels.join(".");
    let mut script = script.lock().unwrap();
    let answers: Vec<IpAddr> = match script.get_mut(&name) {
        Some((sets, next)) => {
            // Rotate on A queries only, so one lookup (A then AAAA) sees one answer set.
            let set = sets[*next % sets.len()].clone();
            if qtype == 1 {
                *next += 1;
                queries.fetch_add(1, Ordering::SeqCst);
            }
            set
        }
        None => Vec::new(),
    };
    let records: Vec<&IpAddr> = answers
        .iter()
        .filter(|ip| (qtype == 1 && ip.is_ipv4()) || (qtype == 28 && ip.is_ipv6()))
        .collect();
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(&[0x81, 0x80]); // response, recursion available, no error
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    for ip in records {
        out.extend_from_slice(&[0xc0, 0x0c]); // name: pointer to the question
        let (ty, data) = match ip {
            IpAddr::V4(v4) => (1u16, v4.octets().to_vec()),
            IpAddr::V6(v6) => (28u16, v6.octets().to_vec()),
        };
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes()); // class IN
        out.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: no caching
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}
