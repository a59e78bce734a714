//! HTTPS with rustls, and the plain-HTTP listener that only redirects to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::redirect::LocalTarget;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("the certificate or key does not parse: {0}")]
    Pem(String),
    #[error("production certificate refused: {0}")]
    Refused(String),
    #[error("rustls refused the configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS 1.2/1.3 server configuration (ring provider, safe defaults) with HTTP/2 and HTTP/1.1.
pub(crate) fn server_config(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Production: the operator's certificate chain and key. Refused when they do not parse, do not
/// match, do not name the public host of `base_url`, or are the development certificate.
pub(crate) fn production_config(
    config: &crate::Config,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |path: &Option<std::path::PathBuf>| -> Result<zeroize::Zeroizing<String>, TlsError> {
        let path = path
            .as_deref()
            .ok_or_else(|| TlsError::Refused("--tls-cert and --tls-key are required".into()))?;
        std::fs::read_to_string(path)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| TlsError::Refused(format!("{}: {e}", path.display())))
    };
    let cert_pem = read(&config.tls_cert)?;
    let key_pem = read(&config.tls_key)?;
    let development = std::fs::read_to_string(config.data_dir.join("tls-cert.pem")).ok();
    if development.is_some_and(|d| d.trim() == cert_pem.trim()) {
        return Err(TlsError::Refused(
            "that is the development certificate; production needs a real one".into(),
        ));
    }
    let leaf = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| TlsError::Pem("no certificate in --tls-cert".into()))?
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    let host = url::Url::parse(&config.base_url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
        .ok_or_else(|| TlsError::Refused("--base-url has no host".into()))?;
    let name = rustls::pki_types::ServerName::try_from(host.as_str())
        .map_err(|_| TlsError::Refused(format!("{host} is not a valid server name")))?;
    webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| TlsError::Pem(format!("{e:?}")))?
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| TlsError::Refused(format!("the certificate does not name {host}")))?;
    // rustls also refuses a key that does not belong to the certificate.
    server_config(&cert_pem, &key_pem)
}

/// Serves `app` over TLS on `listener` until the task is dropped.
pub(crate) async fn serve_https(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            // A client that never finishes the handshake does not hold a task forever.
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            // The peer's address, for per-client limits (the app terminates TLS itself).
            let app = app.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let service = TowerToHyperService::new(app);
            if let Err(error) = Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
}

/// Redirects every plain-HTTP request to the same path on `base_url`.
pub(crate) fn redirect_app(base_url: String) -> Router {
    Router::new().fallback(move |uri: Uri| {
        let base = base_url.clone();
        async move {
            // Through the one redirect check: a path such as `//evil.example` or `/.//evil`
            // goes to the home page instead.
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let target = LocalTarget::or(Some(path), &base, "/");
            (
                StatusCode::PERMANENT_REDIRECT,
                [(header::LOCATION, target.absolute(&base))],
            )
                .into_response()
        }
    })
}

/// Binds a listener; the error names the address and the flag that moves it (`flag`).
pub(crate) async fn bind(addr: SocketAddr, flag: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| {
        let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "is another copy of the app running? Stop it, or pass {flag} with another address"
            )
        } else {
            format!("pass {flag} with another address")
        };
        std::io::Error::new(
            error.kind(),
            format!("cannot listen on {addr}: {error} ({hint})"),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_taken_port_is_named_with_the_flag_that_moves_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = bind(addr, "--https").await.unwrap_err();
        let message = error.to_string();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("--https"), "{message}");
        // Positive control: once free, the same address binds.
        drop(taken);
        assert!(bind(addr, "--https").await.is_ok());
    }
}
