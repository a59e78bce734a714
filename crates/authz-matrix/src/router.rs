//! The recording router: an axum [`Router`] built through a wrapper that keeps, beside it, every
//! path it routes and the method router behind it, so a test can ask which methods each path
//! really answers.

use std::cmp::Ordering;
use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::handler::Handler;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, Route};
use http::{Method, StatusCode};
use tower::{Layer, Service, ServiceExt};

/// Every method a route is probed with. `HEAD` is reported only where `GET` is not served:
/// axum answers `HEAD` with the `GET` handler, so the `GET` row covers it.
pub const PROBED_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// One method on one path template, as the router serves it and as a matrix row names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Endpoint {
    /// The HTTP method.
    pub method: Method,
    /// The path template exactly as it was given to the router (`/notes/{id}`), with any
    /// prefixes of [`RecordingRouter::nest`] applied.
    pub path: String,
}

impl Endpoint {
    /// An endpoint for `method` on `path`.
    #[must_use]
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
        }
    }
}

impl Ord for Endpoint {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.path.as_str(), self.method.as_str())
            .cmp(&(other.path.as_str(), other.method.as_str()))
    }
}

impl PartialOrd for Endpoint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// What was routed at one path.
enum Target<S> {
    /// A method router: probed method by method.
    Methods(Box<MethodRouter<S>>),
    /// A whole service ([`RecordingRouter::route_service`]): it answers every method.
    Service,
}

impl<S> Clone for Target<S> {
    fn clone(&self) -> Self {
        match self {
            Self::Methods(m) => Self::Methods(m.clone()),
            Self::Service => Self::Service,
        }
    }
}

struct Entry<S> {
    path: String,
    target: Target<S>,
}

impl<S> Clone for Entry<S> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            target: self.target.clone(),
        }
    }
}

/// An axum [`Router`] under construction that records every route added to it.
///
/// It has the routing methods of [`Router`] that add routes (`route`, `route_service`, `merge`,
/// `nest`) and those that do not (`layer`, `route_layer`, `fallback`, `with_state`), but merges
/// and nests only other recording routers: a plain [`Router`] cannot be slipped in, so no route
/// reaches the app without being recorded. [`into_parts`](RecordingRouter::into_parts) hands back
/// the built router and the [`RouteRecord`].
///
/// What is covered: every path given to `route` or `route_service`, in this router and in every
/// recording router merged or nested into it, with the nesting prefixes applied as axum applies
/// them. Which methods a path serves is found by behaviour, not declared: the record probes each
/// path's own method router (see [`RouteRecord::served`]). What is not a route, and so not in the
/// record: fallbacks (the router's, and what a layer answers on its own before routing, such as
/// a CORS preflight), and anything added to the plain [`Router`] after `into_parts` (add only
/// layers there).
pub struct RecordingRouter<S = ()> {
    router: Router<S>,
    entries: Vec<Entry<S>>,
}

impl<S> fmt::Debug for RecordingRouter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingRouter")
            .field(
                "paths",
                &self.entries.iter().map(|e| &e.path).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<S> Clone for RecordingRouter<S> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            entries: self.entries.clone(),
        }
    }
}

impl<S> Default for RecordingRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<S> RecordingRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    /// An empty router.
    #[must_use]
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            entries: Vec::new(),
        }
    }

    /// [`Router::route`], recorded. Panics as [`Router::route`] does (an invalid path, a method
    /// routed twice at one path).
    #[must_use]
    #[track_caller]
    pub fn route(mut self, path: &str, method_router: MethodRouter<S>) -> Self {
        self.router = self.router.route(path, method_router.clone());
        self.entries.push(Entry {
            path: path.to_owned(),
            target: Target::Methods(Box::new(method_router)),
        });
        self
    }

    /// [`Router::route_service`], recorded as serving every probed method (a service is not
    /// probed: it would run).
    #[must_use]
    #[track_caller]
    pub fn route_service<T>(mut self, path: &str, service: T) -> Self
    where
        T: Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
        T::Response: IntoResponse,
        T::Future: Send + 'static,
    {
        self.router = self.router.route_service(path, service);
        self.entries.push(Entry {
            path: path.to_owned(),
            target: Target::Service,
        });
        self
    }

    /// [`Router::merge`] of another recording router: its routes join this record.
    #[must_use]
    #[track_caller]
    pub fn merge(mut self, other: RecordingRouter<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.entries.extend(other.entries);
        self
    }

    /// [`Router::nest`] of another recording router under `prefix`: its routes join this record
    /// with the prefix applied as axum applies it (`/api` + `/` is `/api`). Panics as
    /// [`Router::nest`] does (nesting at the root).
    #[must_use]
    #[track_caller]
    pub fn nest(mut self, prefix: &str, other: RecordingRouter<S>) -> Self {
        self.router = self.router.nest(prefix, other.router);
        self.entries
            .extend(other.entries.into_iter().map(|e| Entry {
                path: nested_path(prefix, &e.path),
                target: e.target,
            }));
        self
    }

    /// [`Router::layer`]: wraps the routes added so far (and the fallback). A layer does not
    /// change which methods a path is recorded as serving: the record probes the method routers
    /// themselves, where a layer that answers early (a sign-in check) would hide a `405`.
    #[must_use]
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.router = self.router.layer(layer);
        self
    }

    /// [`Router::route_layer`]: wraps the routes added so far. Panics as
    /// [`Router::route_layer`] does (no routes yet).
    #[must_use]
    #[track_caller]
    pub fn route_layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.router = self.router.route_layer(layer);
        self
    }

    /// [`Router::fallback`]. A fallback is not a route: it is not recorded, and a matrix row for
    /// a path only the fallback answers is a row naming no route.
    #[must_use]
    pub fn fallback<H, T>(mut self, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.router = self.router.fallback(handler);
        self
    }

    /// [`Router::with_state`]: the router and the recorded method routers get the state.
    #[must_use]
    pub fn with_state<S2>(self, state: S) -> RecordingRouter<S2> {
        RecordingRouter {
            router: self.router.with_state(state.clone()),
            entries: self
                .entries
                .into_iter()
                .map(|e| Entry {
                    path: e.path,
                    target: match e.target {
                        Target::Methods(m) => {
                            Target::Methods(Box::new(m.with_state(state.clone())))
                        }
                        Target::Service => Target::Service,
                    },
                })
                .collect(),
        }
    }
}

impl RecordingRouter<()> {
    /// The built router, to serve (add layers to it, never routes: a route added to it now
    /// would not be recorded), and the record of its routes.
    pub fn into_parts(self) -> (Router, RouteRecord) {
        (
            self.router,
            RouteRecord {
                entries: self.entries,
            },
        )
    }
}

/// The routes of a [`RecordingRouter`]: each path template and what serves it.
#[derive(Clone)]
pub struct RouteRecord {
    entries: Vec<Entry<()>>,
}

impl fmt::Debug for RouteRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteRecord")
            .field(
                "paths",
                &self.entries.iter().map(|e| &e.path).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RouteRecord {
    /// Every `(method, path template)` the router serves, sorted, each once.
    ///
    /// Found by behaviour: each path's method router is called with every method of
    /// [`PROBED_METHODS`], behind a layer that answers for its handlers (so no handler runs and
    /// no state is read). A method its handlers take is served; one that falls through to
    /// axum's `405 Method Not Allowed` is not; one a method-level fallback of the user's answers
    /// (`get(h).fallback(f)`) is served, unless that fallback answers `405`. A method router
    /// with no handler but a fallback (`any(h)`) and a [`RecordingRouter::route_service`] serve
    /// every probed method (finding that out, axum's "route_layer before any routes" panic is
    /// caught; the panic hook still prints its message). `HEAD` is left out where `GET` is served
    /// (axum runs the `GET` handler for it). Methods outside [`PROBED_METHODS`] are not probed.
    pub async fn served(&self) -> Vec<Endpoint> {
        let mut served = Vec::new();
        for entry in &self.entries {
            let methods = match &entry.target {
                Target::Methods(router) => probe(router).await,
                Target::Service => PROBED_METHODS.to_vec(),
            };
            served.extend(methods.into_iter().map(|m| Endpoint::new(m, &entry.path)));
        }
        let get_paths: Vec<String> = served
            .iter()
            .filter(|e| e.method == Method::GET)
            .map(|e| e.path.clone())
            .collect();
        served.retain(|e| e.method != Method::HEAD || !get_paths.contains(&e.path));
        served.sort();
        served.dedup();
        served
    }

    /// The recorded path templates, in the order they were added (a path routed in several
    /// calls appears once per call).
    #[must_use]
    pub fn paths(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.path.as_str()).collect()
    }
}

/// The methods `router` serves.
async fn probe(router: &MethodRouter) -> Vec<Method> {
    // `route_layer` panics on a method router with no handler at all (only a fallback, as
    // `any(h)` builds): such a router answers every method. The panic message still reaches the
    // panic hook (test output); nothing else happens.
    let marked = match catch_unwind(AssertUnwindSafe(|| router.clone().route_layer(MarkLayer))) {
        Ok(marked) => marked,
        Err(_) => return PROBED_METHODS.to_vec(),
    };
    let mut served = Vec::new();
    for method in PROBED_METHODS {
        let mut request = Request::new(Body::empty());
        *request.method_mut() = method.clone();
        let response = match marked.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if response.extensions().get::<Marked>().is_some()
            || response.status() != StatusCode::METHOD_NOT_ALLOWED
        {
            served.push(method);
        }
    }
    served
}

/// The extension on a response that a probed route's handler would have answered.
#[derive(Clone, Copy)]
struct Marked;

/// Stands in for every handler of a probed method router.
#[derive(Clone, Copy)]
struct MarkLayer;

impl<Inner> Layer<Inner> for MarkLayer {
    type Service = MarkService;

    fn layer(&self, _inner: Inner) -> MarkService {
        MarkService
    }
}

#[derive(Clone, Copy)]
struct MarkService;

impl Service<Request> for MarkService {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request) -> Self::Future {
        let mut response = StatusCode::NO_CONTENT.into_response();
        response.extensions_mut().insert(Marked);
        ready(Ok(response))
    }
}

/// `path` nested under `prefix`, as axum 0.8 joins them.
fn nested_path(prefix: &str, path: &str) -> String {
    if prefix.ends_with('/') {
        format!("{prefix}{}", path.trim_start_matches('/'))
    } else if path == "/" {
        prefix.to_owned()
    } else {
        format!("{prefix}{path}")
    }
}
