//! Round trips to PostgreSQL, counted on the wire.
//!
//! The throwaway cluster listens on a Unix socket. [`Counter::install`] moves that socket aside
//! (a listening socket keeps working under its new name) and listens at the old path itself,
//! forwarding every byte both ways; so every connection anyone opens afterwards — the app's
//! pools and the bare route's alike — passes through it unchanged. On the way to the server it
//! reads the protocol's message frames and counts the ones that end a round trip: `Sync` (the
//! end of an extended-protocol exchange, which sqlx sends once per statement) and `Query` (the
//! simple protocol, one round trip each). Nothing is changed, delayed or reordered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The protocol version of a startup message (3.0); other untyped first messages (SSL and GSS
/// encryption requests, cancel requests) are followed by another untyped one or by nothing.
const PROTOCOL_3: u32 = 196_608;

/// Round trips seen so far, over every connection opened since [`Counter::install`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Puts the counter in front of the server socket `socket`.
    pub(crate) async fn install(socket: &Path) -> Result<Self, BoxError> {
        let moved: PathBuf = socket.with_extension("counted");
        std::fs::rename(socket, &moved)?;
        let listener = UnixListener::bind(socket)?;
        let counter = Self::default();
        let total = counter.0.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (moved, total) = (moved.clone(), total.clone());
                tokio::spawn(async move {
                    if let Ok(server) = UnixStream::connect(&moved).await {
                        let _ = relay(client, server, total).await;
                    }
                });
            }
        });
        Ok(counter)
    }

    /// The round trips counted so far.
    pub(crate) fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Round trips per call of `send` (each must answer 2xx): 20 calls to warm pools and caches,
/// then the count over 200, less what the same time idle costs (background listeners and jobs).
pub(crate) async fn per_request<F, Fut>(counter: &Counter, mut send: F) -> Result<f64, BoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(u16, String), BoxError>>,
{
    const CALLS: u32 = 200;
    for _ in 0..20 {
        let (status, body) = send().await?;
        if !(200..300).contains(&status) {
            return Err(format!("a counted request answered {status}: {body}").into());
        }
    }
    let (start, began) = (counter.now(), std::time::Instant::now());
    for _ in 0..CALLS {
        let (status, body) = send().await?;
        if !(200..300).contains(&status) {
            return Err(format!("a counted request answered {status}: {body}").into());
        }
    }
    let (busy, took) = (counter.now() - start, began.elapsed());
    let idle_start = counter.now();
    tokio::time::sleep(took).await;
    let idle = counter.now() - idle_start;
    let counted = busy.saturating_sub(idle);
    Ok(f64::from(u32::try_from(counted)?) / f64::from(CALLS))
}

async fn relay(
    client: UnixStream,
    server: UnixStream,
    total: Arc<AtomicU64>,
) -> Result<(), BoxError> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers =
        tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
    let requests = async move {
        let mut started = false;
        loop {
            let kind = if started {
                let mut kind = [0u8; 1];
                if client_read.read_exact(&mut kind).await.is_err() {
                    break;
                }
                server_write.write_all(&kind).await?;
                Some(kind[0])
            } else {
                None
            };
            let mut length = [0u8; 4];
            client_read.read_exact(&mut length).await?;
            server_write.write_all(&length).await?;
            let body_length = usize::try_from(u32::from_be_bytes(length))?.saturating_sub(4);
            let mut body = vec![0u8; body_length];
            client_read.read_exact(&mut body).await?;
            server_write.write_all(&body).await?;
            match kind {
                Some(b'S' | b'Q') => {
                    total.fetch_add(1, Ordering::SeqCst);
                }
                Some(_) => {}
                None => {
                    let code = body
                        .get(..4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    started = code == Some(PROTOCOL_3);
                }
            }
        }
        Ok::<(), BoxError>(())
    };
    let sent = requests.await;
    answers.abort();
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counter sees exactly one round trip per simple query and per extended statement, and
    /// passes everything through.
    #[tokio::test]
    async fn counts_the_round_trips_of_a_real_connection() {
        let db = testkit::fresh_database(&testkit::Template::new("roundtrips", "SELECT 1")).await;
        let options = db.options(testkit::Role::Admin);
        let Some(dir) = options.get_socket().cloned() else {
            panic!("the throwaway cluster listens on a Unix socket");
        };
        let socket = dir.join(format!(".s.PGSQL.{}", options.get_port()));
        // A copy of the socket's path in a directory of its own, so the shared cluster's socket
        // stays where it is for every other test.
        let private = std::env::temp_dir().join(format!("roundtrips-{}", std::process::id()));
        std::fs::create_dir_all(&private).unwrap();
        let mirror = private.join(format!(".s.PGSQL.{}", options.get_port()));
        let _ = std::fs::remove_file(&mirror);
        let forward = UnixListener::bind(&mirror).unwrap();
        tokio::spawn(async move {
            while let Ok((client, _)) = forward.accept().await {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let server = UnixStream::connect(&socket).await.unwrap();
                    let (mut a, mut b) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
            }
        });
        let counter = Counter::install(&mirror).await.unwrap();
        let mut connection = {
            use sqlx::Connection;
            sqlx::PgConnection::connect_with(&options.clone().socket(&private))
                .await
                .unwrap()
        };
        let start = counter.now();
        let (one,): (i32,) = sqlx::query_as("SELECT $1::int4")
            .bind(1)
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(one, 1);
        let prepared = counter.now() - start;
        assert!((1..=2).contains(&prepared), "{prepared}");
        let start = counter.now();
        for n in 0..10 {
            let (back,): (i32,) = sqlx::query_as("SELECT $1::int4")
                .bind(n)
                .fetch_one(&mut connection)
                .await
                .unwrap();
            assert_eq!(back, n);
        }
        assert_eq!(
            counter.now() - start,
            10,
            "one round trip per cached statement"
        );
        let start = counter.now();
        sqlx::raw_sql("SELECT 1; SELECT 2")
            .execute(&mut connection)
            .await
            .unwrap();
        assert_eq!(counter.now() - start, 1, "a simple query is one round trip");
        std::fs::remove_dir_all(&private).unwrap();
    }
}
