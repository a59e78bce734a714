//! The response futures of [`SessionManager`](crate::SessionManager) and
//! [`Guard`](crate::Guard).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

/// The response future of [`SessionManager`](crate::SessionManager).
///
/// Boxed: the session is looked up in the store (an asynchronous database call) before the
/// inner service is called.
pub struct SessionResponseFuture<B, E> {
    inner: Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>,
}

impl<B, E> SessionResponseFuture<B, E> {
    pub(crate) fn new(
        future: impl Future<Output = Result<Response<B>, E>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(future),
        }
    }
}

impl<B, E> Future for SessionResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for SessionResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionResponseFuture")
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response future of [`Guard`](crate::Guard): the inner service's future, or the
    /// refusal. Not boxed: the guard decides synchronously.
    pub struct GuardResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B> GuardResponseFuture<F, B> {
    pub(crate) const fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) const fn rejected(response: Response<B>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for GuardResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Rejected { response } => {
                #[allow(clippy::expect_used)] // Polling a completed future violates its contract.
                let response = response
                    .take()
                    .expect("GuardResponseFuture polled after completion");
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl<F, B> fmt::Debug for GuardResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardResponseFuture")
            .finish_non_exhaustive()
    }
}
