//! Method name → handler service.
//!
//! Each handler is a `tower::Service<Request>`, so a layer can wrap one
//! method ([`Router::route`] takes any such service). The router is a
//! service too, for dispatch inside other services.
//!
//! Handlers are cancelled (their future dropped) when the caller cancels,
//! times out, or disconnects.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use busline_core::{Error, Identity, Payload, Result};
use futures::{future::BoxFuture, Stream};
use rustc_hash::FxHashMap;
use serde::{de::DeserializeOwned, Serialize};
use tower::{Layer, Service, ServiceExt};

use super::{
    handler::{StreamFn, UnaryFn},
    Client,
};

/// What kind of answer the caller expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Exactly one reply.
    Unary,
    /// No reply at all.
    Notify,
    /// A stream of items.
    Stream,
}

/// A call as a handler service sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method called.
    pub method: String,
    /// The arguments, as the caller encoded them.
    pub payload: Payload,
    /// What the caller expects back.
    pub kind: CallKind,
    /// Who the caller authenticated as.
    pub identity: Arc<Identity>,
    /// When the caller stops waiting, if it said.
    pub deadline: Option<Instant>,
    /// The caller's side of the connection, to call or notify it back
    /// (it answers if it serves methods, see [`ClientBuilder::serve`]);
    /// `None` once the connection is gone.
    ///
    /// [`ClientBuilder::serve`]: super::ClientBuilder::serve
    pub peer: Option<Client>,
}

impl Request {
    /// The arguments, decoded; errors name the method.
    ///
    /// A single argument may also come as a one-element JSON array: JSON-RPC
    /// requires params to be an array or an object, so that is how its
    /// clients send one value.
    pub fn arguments<Args: DeserializeOwned>(&self) -> Result<Args> {
        self.payload.decode_params().map_err(|e| {
            Error::Serialization(format!("invalid arguments for {:?}: {e}", self.method))
        })
    }
}

/// A stream of payloads, the answer of a streaming handler.
pub type PayloadStream = Pin<Box<dyn Stream<Item = Result<Payload>> + Send>>;

/// What a handler service returns.
pub enum Reply {
    /// One payload (ignored for notifications).
    Unary(Payload),
    /// A stream of payloads.
    Stream(PayloadStream),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Unary(p) => f.debug_tuple("Unary").field(p).finish(),
            Reply::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// A handler service behind one dynamic call: clone the service (cheap for
/// closures), drive it through `poll_ready` and `call`, box the future once.
type Handler = Arc<dyn Fn(Request) -> BoxFuture<'static, Result<Reply>> + Send + Sync>;

fn erase<S>(service: S) -> Handler
where
    S: Service<Request, Response = Reply, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    Arc::new(move |req| Box::pin(service.clone().oneshot(req)))
}

/// One method's handler as a service, the input of [`Router::layer`].
#[derive(Clone)]
pub struct Route(Handler);

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Route")
    }
}

impl Service<Request> for Route {
    type Response = Reply;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Reply>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        (self.0)(req)
    }
}

/// Dispatches calls to handlers by method name.
///
/// ```
/// use busline::rpc::Router;
/// use futures::stream;
///
/// let router = Router::new()
///     .unary("add", |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) })
///     .notification("log", |line: String| async move {
///         println!("{line}");
///         Ok::<_, String>(())
///     })
///     .stream("count", |n: u64| stream::iter((0..n).map(Ok::<_, String>)));
/// assert_eq!(router.methods().len(), 3);
/// ```
#[derive(Clone, Default)]
pub struct Router {
    /// Names the program chose (a caller's name only looks one up): a fast
    /// hash is safe, and it runs for every call.
    routes: Arc<FxHashMap<String, Handler>>,
    fallback: Option<Handler>,
    tap: Option<NotificationTap>,
    pass: Option<PassTap>,
}

/// Where a unary call goes on instead of to a handler: written as it came
/// to `provider`'s connection, its answer written back as it comes, with
/// no future per call (the broker's routed calls). `guard` is held until
/// the answer; `group` names what can fail the call early
/// ([`Client::fail_passed`](super::Client::fail_passed)).
pub(crate) struct PassTo {
    pub(crate) provider: super::Client,
    pub(crate) group: u64,
    pub(crate) guard: Box<dyn Send>,
}

/// A call passed on before whose provider's connection ended unanswered:
/// the group it was passed on in, and every connection that lost it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry<'a> {
    pub(crate) group: u64,
    pub(crate) tried: &'a [u64],
}

/// Decides, for a unary call `method` come on connection `from` (again,
/// if `Retry`), where it is passed on; `None` serves it through the
/// routes; an error answers it.
pub(crate) type PassTap =
    Arc<dyn Fn(&str, u64, Option<Retry<'_>>) -> Result<Option<PassTo>> + Send + Sync>;

/// A synchronous first look at each notification, before the routes, with
/// the [`Client::connection_id`](super::Client::connection_id) of the
/// connection it came on: it consumes the notification, or hands it back
/// for the routes. For high-rate notifications (publications, at the
/// broker and at its clients) that need no future, no boxing and no tower
/// call each; taken by value, so what it keeps (a topic name) needs no
/// copy.
pub(crate) type NotificationTap =
    Arc<dyn Fn(String, Payload, u64) -> Option<(String, Payload)> + Send + Sync>;

impl Router {
    /// A router with no methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `method` with any tower service over [`Request`] → [`Reply`].
    ///
    /// This is the general form the other methods build on; use it to wrap
    /// one method in middleware or to read the caller's [`Identity`].
    pub fn route<S>(mut self, method: impl Into<String>, service: S) -> Self
    where
        S: Service<Request, Response = Reply, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Arc::make_mut(&mut self.routes).insert(method.into(), erase(service));
        self
    }

    /// Serve every method not registered by name with `service` (instead of
    /// answering [`Error::MethodNotFound`]): for routing by name pattern,
    /// as a broker does, or a table that changes at run time.
    pub fn fallback<S>(mut self, service: S) -> Self
    where
        S: Service<Request, Response = Reply, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        self.fallback = Some(erase(service));
        self
    }

    /// Wrap every method registered so far in `layer` (and the fallback, if
    /// set), as one would wrap a single method with [`Router::route`].
    /// Methods added afterwards are not wrapped.
    ///
    /// ```
    /// use busline::rpc::Router;
    /// use tower::limit::ConcurrencyLimitLayer;
    ///
    /// // At most 16 calls of each method at once.
    /// let router = Router::new()
    ///     .unary("a", |x: u8| async move { Ok::<_, String>(x) })
    ///     .unary("b", |x: u8| async move { Ok::<_, String>(x) })
    ///     .layer(ConcurrencyLimitLayer::new(16));
    /// # assert_eq!(router.methods(), ["a", "b"]);
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route>,
        L::Service:
            Service<Request, Response = Reply, Error = Error> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        for handler in Arc::make_mut(&mut self.routes).values_mut() {
            *handler = erase(layer.layer(Route(handler.clone())));
        }
        if let Some(fallback) = self.fallback.take() {
            self.fallback = Some(erase(layer.layer(Route(fallback))));
        }
        // A call passed on would go by the layer: every call goes through it.
        self.pass = None;
        self
    }

    /// Serve `method` with an async function from arguments to one result.
    ///
    /// Arguments arrive in the caller's payload encoding and the result goes
    /// back in the same one. The error type may be anything that converts
    /// into a boxed error (`String`, `&str`, `std::io::Error`, `anyhow::Error`,
    /// ...); a [`busline_core::Error`] is passed through as it is.
    pub fn unary<F, Args, Fut, Ret, E>(self, method: impl Into<String>, f: F) -> Self
    where
        F: Fn(Args) -> Fut + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + Send + 'static,
        Fut: Future<Output = std::result::Result<Ret, E>> + Send + 'static,
        Ret: Serialize + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.route(method, UnaryFn::new(f))
    }

    /// Serve `method` as a notification: the caller gets no reply, not even
    /// on error (errors are logged).
    pub fn notification<F, Args, Fut, E>(self, method: impl Into<String>, f: F) -> Self
    where
        F: Fn(Args) -> Fut + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + Send + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        // A unary handler whose reply the connection never sends.
        self.route(method, UnaryFn::new(f))
    }

    /// Serve `method` with a function returning a stream of results.
    ///
    /// Items go out as the caller grants credit, so a slow caller slows the
    /// stream down instead of filling memory. An `Err` item ends the stream
    /// with that error.
    pub fn stream<F, Args, S, T, E>(self, method: impl Into<String>, f: F) -> Self
    where
        F: Fn(Args) -> S + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + Send + 'static,
        S: Stream<Item = std::result::Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.route(method, StreamFn::new(f))
    }

    /// Give every notification to `tap` first; those it consumes never
    /// reach the routes.
    pub(crate) fn tap_notifications(mut self, tap: NotificationTap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Pass the unary calls `tap` picks a connection for straight on to it
    /// (asked before the routes; calls with a deadline always go to the
    /// routes, which keep it).
    pub(crate) fn pass_calls(mut self, tap: PassTap) -> Self {
        self.pass = Some(tap);
        self
    }

    /// Whether some calls may be passed on (else every call goes to the
    /// routes without asking).
    pub(crate) fn passes_calls(&self) -> bool {
        self.pass.is_some()
    }

    /// Where unary call `method`, come on connection `from`, is passed on.
    pub(crate) fn pass_target(
        &self,
        method: &str,
        from: u64,
        retry: Option<Retry<'_>>,
    ) -> Result<Option<PassTo>> {
        match &self.pass {
            Some(tap) => tap(method, from, retry),
            None => Ok(None),
        }
    }

    /// Give `method` with `payload`, come on connection `from`, to the
    /// notification tap; what it did not consume comes back.
    pub(crate) fn tap(
        &self,
        method: String,
        payload: Payload,
        from: u64,
    ) -> Option<(String, Payload)> {
        match &self.tap {
            Some(tap) => tap(method, payload, from),
            None => Some((method, payload)),
        }
    }

    /// Start serving `req`; the future owns everything it needs.
    pub(crate) fn dispatch(&self, req: Request) -> BoxFuture<'static, Result<Reply>> {
        match self.routes.get(&req.method).or(self.fallback.as_ref()) {
            Some(handler) => handler(req),
            None => Box::pin(std::future::ready(Err(Error::MethodNotFound(req.method)))),
        }
    }

    /// The method names served, sorted.
    pub fn methods(&self) -> Vec<&str> {
        let mut m: Vec<_> = self.routes.keys().map(String::as_str).collect();
        m.sort_unstable();
        m
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("methods", &self.methods())
            .finish()
    }
}

impl Service<Request> for Router {
    type Response = Reply;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Reply>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.dispatch(req)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::util::MapRequestLayer;

    use super::*;
    use busline_core::Encoding;

    fn request(method: &str) -> Request {
        with_payload(method, "1")
    }

    fn with_payload(method: &str, json: &str) -> Request {
        Request {
            method: method.into(),
            payload: Payload::from_bytes(Encoding::Json, json.to_owned()),
            kind: CallKind::Unary,
            identity: Arc::default(),
            deadline: None,
            peer: None,
        }
    }

    #[test]
    fn one_argument_may_come_wrapped_in_an_array() {
        let req = |json| with_payload("m", json);
        assert_eq!(req("[7]").arguments::<u64>().unwrap(), 7);
        assert_eq!(req("7").arguments::<u64>().unwrap(), 7);
        assert_eq!(req("[7]").arguments::<Vec<u64>>().unwrap(), vec![7]);
        assert_eq!(req("[7,8]").arguments::<(u64, u64)>().unwrap(), (7, 8));
        assert!(matches!(
            req("[7,8]").arguments::<u64>(),
            Err(Error::Serialization(m)) if m.contains("invalid arguments for \"m\"")
        ));
    }

    #[tokio::test]
    async fn a_layer_wraps_the_methods_registered_before_it() {
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let echo = |x: u8| async move { Ok::<_, String>(x) };
        let router = Router::new()
            .unary("a", echo)
            .unary("b", echo)
            .layer(MapRequestLayer::new(move |req: Request| {
                count.fetch_add(1, Ordering::SeqCst);
                req
            }))
            .unary("c", echo);
        for method in ["a", "b", "c"] {
            assert!(matches!(
                router.dispatch(request(method)).await,
                Ok(Reply::Unary(_))
            ));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        assert!(matches!(
            router.dispatch(request("d")).await,
            Err(Error::MethodNotFound(m)) if m == "d"
        ));
    }
}
