//! A tool declared with network, in its own network namespace: it reaches what its egress
//! policy allows through the egress proxy (the positive controls), and nothing else — no
//! direct TCP or UDP to the host, no route anywhere, no host UNIX socket; denials answer 403
//! and reach the policy's hook. Linux only. Run as root (the tool runs as `nobody`), and the
//! same checks again from a child of this test binary that has dropped to an unprivileged uid.
#![cfg(target_os = "linux")]
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)] // Helpers fail the test by panicking.

mod subprocess;

use subprocess::{is_root, rerun_as_ordinary_user, text};

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_guard::{Decision, DecisionHook, EgressPolicy, EgressProxy, NameResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tool_sandbox::process::{
    Exit, Isolation, PROXY_ADDR, ProcessOutput, RunAs, SandboxError, SandboxedCommand,
};

const HELPER_ENV: &str = "TOOL_SANDBOX_NETWORK_HELPER";
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn run_as_ids() -> Option<(u32, u32)> {
    match RunAs::default() {
        RunAs::Ids { uid, gid } => Some((uid, gid)),
        _ => None,
    }
}

/// Names for the tests: `svc.test` is the host's loopback, `meta.test` the metadata address.
struct Names;

impl NameResolver for Names {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, std::io::Error>> + Send + 'a>> {
        let answer: Vec<IpAddr> = match host {
            "svc.test" => vec![LOCAL],
            "meta.test" => vec![Ipv4Addr::new(169, 254, 169, 254).into()],
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

/// A host-side HTTP server on loopback answering `hello` to every request.
async fn http_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, hits)
}

/// A host-side listener that only counts accepts.
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let count = accepts.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepts)
}

/// The tool's egress proxy: loopback on `port` only (and no other private address).
fn proxy(port: u16, hook: &Arc<Recorder>) -> EgressProxy {
    let policy = EgressPolicy::new("network-tool")
        .allow_cidr("127.0.0.1/32")
        .unwrap()
        .ports([port])
        .with_hook(hook.clone());
    EgressProxy::new(policy, Arc::new(Names)).caller("net_tool")
}

async fn python(script: &str, args: &[&str], egress: EgressProxy) -> ProcessOutput {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    SandboxedCommand::new("/usr/bin/python3")
        .args(all)
        .network(true)
        .egress(egress)
        .run()
        .await
        .unwrap()
}

/// Fetches each URL with urllib (which honours the proxy variables) and prints the status.
const FETCH: &str = r"
import sys, urllib.request, urllib.error
for url in sys.argv[1:]:
    try:
        r = urllib.request.urlopen(url, timeout=10)
        print(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode().strip())
    except Exception as e:
        print('error', type(e).__name__)
";

/// Opens a CONNECT tunnel through the proxy named in `https_proxy` and, with `get`, sends a GET
/// through it.
const TUNNEL: &str = r"
import os, socket, sys
proxy = os.environ['https_proxy'].removeprefix('http://')
host, port = proxy.rsplit(':', 1)
s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(('CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (sys.argv[1], sys.argv[1])).encode())
head = b''
while not head.endswith(b'\r\n\r\n'):
    c = s.recv(1)
    if not c:
        break
    head += c
print(head.split(b'\r\n')[0].decode())
if head.startswith(b'HTTP/1.1 200') and sys.argv[2:] == ['get']:
    s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
    body = b''
    while True:
        c = s.recv(4096)
        if not c:
            break
        body += c
    print(body.decode().split('\r\n\r\n', 1)[1])
";

/// Raw TCP connects, bypassing the proxy; prints one outcome per address.
const RAW_TCP: &str = r"
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(':', 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, 'connected')
    except OSError as e:
        print(target, 'refused' if isinstance(e, ConnectionRefusedError) else 'failed')
";

/// One UDP datagram to the address, bypassing the proxy.
const RAW_UDP: &str = r"
import socket, sys
host, port = sys.argv[1].rsplit(':', 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b'ping', (host, int(port)))
    print('sent')
except OSError:
    print('failed')
";

/// Connects to a pathname UNIX socket.
const UNIX_CONNECT: &str = r"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print('connected')
except OSError:
    print('refused')
";

/// Runs `script` on the host, outside the sandbox, as the identity the tool runs as.
fn on_the_host(script: &str, args: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    let mut control = std::process::Command::new("/usr/bin/python3");
    control.arg("-c").arg(script).args(args).env_clear();
    if let Some((uid, gid)) = run_as_ids() {
        control.uid(uid).gid(gid);
    }
    let out = control.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

async fn check_allowed_destinations_are_reached_through_the_proxy() {
    let (server, hits) = http_server().await;
    let hook = Arc::new(Recorder::default());
    let port = server.port();
    let out = python(
        FETCH,
        &[
            &format!("http://127.0.0.1:{port}/"),
            &format!("http://svc.test:{port}/page"),
        ],
        proxy(port, &hook),
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "200 hello\n200 hello\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // HTTPS tunnelling: CONNECT, then bytes both ways.
    let out = python(TUNNEL, &[&server.to_string(), "get"], proxy(port, &hook)).await;
    assert_eq!(
        text(&out.stdout),
        "HTTP/1.1 200 Connection Established\nhello\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(hook.codes(), vec![(true, "allowed"); 3]);
    // The environment names the proxy, inside the tool's namespace; only `lo` is there.
    let out = SandboxedCommand::new("/bin/sh")
        .args([
            "-c",
            "echo $http_proxy $https_proxy $HTTP_PROXY $HTTPS_PROXY \"[$no_proxy]\"; \
             tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        ])
        .env("http_proxy", "http://attacker.example:1")
        .network(true)
        .egress(proxy(port, &hook))
        .run()
        .await
        .unwrap();
    let url = format!("http://{PROXY_ADDR}");
    // The listener is the host's alone: the tool holds no socket (only its stdio pipes).
    let fds = SandboxedCommand::new("/bin/sh")
        .args(["-c", "ls -l /proc/$$/fd | grep -c socket || true"])
        .network(true)
        .egress(proxy(port, &hook))
        .run()
        .await
        .unwrap();
    assert_eq!(text(&fds.stdout), "0\n", "{}", text(&fds.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{url} {url} {url} {url} []\nlo\n"),
        "{}",
        text(&out.stderr)
    );
}

async fn check_denied_destinations_get_403_and_are_not_contacted() {
    let (server, _) = http_server().await;
    let (counted, accepts) = counting_listener().await;
    let hook = Arc::new(Recorder::default());
    let out = python(
        FETCH,
        &[
            "http://169.254.169.254/latest/meta-data/",
            &format!("http://meta.test:{}/latest/meta-data/", server.port()),
            &format!("http://{counted}/"),
            "http://10.0.0.1/",
        ],
        proxy(server.port(), &hook),
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "403 egress denied: metadata\n403 egress denied: metadata\n\
         403 egress denied: port_not_allowed\n403 egress denied: forbidden_address\n",
        "{}",
        text(&out.stderr)
    );
    let out = python(TUNNEL, &[&counted.to_string()], proxy(server.port(), &hook)).await;
    assert_eq!(text(&out.stdout), "HTTP/1.1 403 Forbidden\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(accepts.load(Ordering::SeqCst), 0);
    assert_eq!(
        hook.codes(),
        vec![
            (false, "metadata"),
            (false, "metadata"),
            (false, "port_not_allowed"),
            (false, "forbidden_address"),
            (false, "port_not_allowed"),
        ]
    );
    // The control: with its port allowed, the same listener is reached through the proxy.
    let out = python(
        TUNNEL,
        &[&counted.to_string()],
        proxy(counted.port(), &hook),
    )
    .await;
    assert!(
        text(&out.stdout).starts_with("HTTP/1.1 200 "),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(accepts.load(Ordering::SeqCst), 1);
}

async fn check_direct_tcp_and_udp_to_the_host_fail() {
    let (server, hits) = http_server().await;
    let hook = Arc::new(Recorder::default());
    let udp = std::net::UdpSocket::bind((LOCAL, 0)).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let udp_addr = udp.local_addr().unwrap().to_string();
    let server_addr = server.to_string();
    // Bypassing the proxy: the host's loopback server is not in the tool's namespace, and
    // there is no route out of it (TEST-NET-1: nothing is sent, the namespace has no route).
    let out = python(
        RAW_TCP,
        &[&server_addr, "192.0.2.1:80"],
        proxy(server.port(), &hook),
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        format!("{server_addr} refused\n192.0.2.1:80 failed\n"),
        "{}",
        text(&out.stderr)
    );
    let out = python(RAW_UDP, &[&udp_addr], proxy(server.port(), &hook)).await;
    assert_eq!(text(&out.stdout), "sent\n", "{}", text(&out.stderr));
    let mut buf = [0u8; 16];
    assert!(udp.recv_from(&mut buf).is_err(), "the datagram arrived");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert!(hook.codes().is_empty(), "the proxy was not involved");
    // The controls: the same scripts on the host reach both.
    assert_eq!(
        on_the_host(RAW_TCP, &[&server_addr]),
        format!("{server_addr} connected\n")
    );
    assert_eq!(on_the_host(RAW_UDP, &[&udp_addr]), "sent\n");
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
}

async fn check_a_host_unix_socket_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let path = path.to_str().unwrap();
    let hook = Arc::new(Recorder::default());
    let out = python(UNIX_CONNECT, &[path], proxy(80, &hook)).await;
    assert_eq!(text(&out.stdout), "refused\n", "{}", text(&out.stderr));
    assert!(listener.accept().is_err(), "the host socket accepted");
    // The control: the same identity connects from the host.
    assert_eq!(on_the_host(UNIX_CONNECT, &[path]), "connected\n");
    assert!(listener.accept().is_ok());
}

async fn check_network_without_the_proxy_is_refused() {
    let err = SandboxedCommand::new("/bin/echo")
        .arg("ran")
        .network(true)
        .run()
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::NetworkWithoutEgress), "{err:?}");
    // Not even in the weaker mode: without its own network namespace the tool would reach
    // what the host reaches.
    let hook = Arc::new(Recorder::default());
    let err = SandboxedCommand::new("/bin/echo")
        .arg("ran")
        .network(true)
        .egress(proxy(80, &hook))
        .isolation(Isolation::NamespacesOrWeaker)
        .simulate_namespaces_unavailable(true)
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SandboxError::NamespacesUnavailable { .. }),
        "{err:?}"
    );
    // The controls: with a proxy it runs; without network the weaker mode is still offered.
    let out = SandboxedCommand::new("/bin/echo")
        .arg("ran")
        .network(true)
        .egress(proxy(80, &hook))
        .isolation(Isolation::NamespacesOrWeaker)
        .run()
        .await
        .unwrap();
    assert_eq!(
        (out.exit, text(&out.stdout)),
        (Exit::Code(0), "ran\n".into())
    );
    assert!(out.confinement.namespaces);
    let out = SandboxedCommand::new("/bin/echo")
        .arg("ran")
        .isolation(Isolation::NamespacesOrWeaker)
        .simulate_namespaces_unavailable(true)
        .run()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "ran\n");
}

async fn run_all_checks() {
    check_allowed_destinations_are_reached_through_the_proxy().await;
    check_denied_destinations_get_403_and_are_not_contacted().await;
    check_direct_tcp_and_udp_to_the_host_fail().await;
    check_a_host_unix_socket_is_unreachable().await;
    check_network_without_the_proxy_is_refused().await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_network_tool_reaches_only_what_its_proxy_allows() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return; // Inside the helper itself.
    }
    runtime().block_on(run_all_checks());
}

#[test]
fn the_same_holds_as_an_ordinary_user() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return;
    }
    if !is_root() {
        runtime().block_on(run_all_checks());
        return;
    }
    let out = rerun_as_ordinary_user(HELPER_ENV);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("unprivileged network checks passed"),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn unprivileged_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    assert!(!is_root());
    runtime().block_on(run_all_checks());
    let mut stdout = std::io::stdout();
    writeln!(stdout, "unprivileged network checks passed").unwrap();
    stdout.flush().unwrap();
    let _ = std::io::stdin().read(&mut [0u8; 0]);
}
