//! An HTTP front for a broker, so that browsers, `curl` and any HTTP
//! client reach channel methods: JSON in, JSON out, busline's typed errors
//! as fitting statuses. Built on axum, tower's web framework, so the same
//! middleware (timeouts, limits, tracing) applies to it as to busline's
//! own services.
//!
//! | endpoint | what it does |
//! | --- | --- |
//! | `POST /v1/channels/{channel}/call/{method}` | calls `method` with the JSON body as arguments; answers its result |
//! | `GET /v1/channels/{channel}/stream/{method}?args=<json>` | the method's stream, as server-sent events |
//! | `GET /v1/channels/{channel}/subscribe/{pattern}` | publications matching `pattern`, as server-sent events |
//! | `GET /v1/ws` | a WebSocket carrying JSON-RPC 2.0: `call`, `stream`, `subscribe` |
//! | `GET /` | a status page: channels, owners, providers, subscribers, clients, rates, live |
//! | `GET /v1/status`, `GET /v1/status/events` | the broker's status as JSON, and each second as server-sent events |
//! | `GET /v1/openapi.json` | this API's OpenAPI 3.1 description, generated from the handlers |
//!
//! Credentials travel in headers: `Authorization: Bearer <secret>` when the
//! gateway is given the broker's shared secret (every endpoint then takes
//! it), and `X-Busline-Password` for a channel that takes a password. A
//! channel is joined by the gateway on first use, never created by it.
//!
//! ```no_run
//! use busline::{broker::BrokerClient, gateway::Gateway, rpc::Client, CborCodec, UnixTransport};
//!
//! # async fn run() -> busline::Result<()> {
//! let bus = BrokerClient::connect(
//!     Client::builder(CborCodec::new()),
//!     &UnixTransport::new(),
//!     &"unix:///run/busline.sock".parse()?,
//! )
//! .await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // curl -d '[2, 40]' http://127.0.0.1:8080/v1/channels/math/call/add
//! Gateway::builder(bus).build().serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod call;
mod channels;
mod error;
mod events;
mod socket;
mod status;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::header,
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
    Json, Router,
};
use busline_core::{ErrorCode, SharedSecret};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

pub use error::{ErrorDetail, ErrorReply};

use crate::broker::BrokerClient;
use channels::Channels;
use error::ApiError;

/// The header that carries a channel's password.
pub const PASSWORD_HEADER: &str = "x-busline-password";

/// Default longest wait for a call's answer: [`GatewayBuilder::call_timeout`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Default most streams and WebSockets at once: [`GatewayBuilder::max_streams`].
pub const DEFAULT_MAX_STREAMS: usize = 256;

/// Default largest request body: [`GatewayBuilder::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// An HTTP gateway to one broker. Cheap to clone; see the [module
/// docs](self).
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

/// How a [`Gateway`] is set up.
#[derive(Debug)]
pub struct GatewayBuilder {
    bus: BrokerClient,
    secret: Option<SharedSecret>,
    call_timeout: Duration,
    max_body: usize,
    max_streams: usize,
    hosts: Vec<String>,
}

/// What every request handler shares.
#[derive(Debug)]
struct Shared {
    channels: Channels,
    secret: Option<SharedSecret>,
    call_timeout: Duration,
    /// The largest request body or WebSocket message taken.
    max_message: usize,
    /// Cancelled when serving ends: streams and sockets end with it.
    closing: CancellationToken,
    /// Room for event streams and WebSockets open at once.
    streams: Arc<tokio::sync::Semaphore>,
    max_streams: usize,
    /// Host names requests may be sent to, beside addresses and localhost.
    hosts: Vec<String>,
    /// The status page's updates.
    status: status::StatusFeed,
}

impl Shared {
    /// Whether `host` (a `Host` header: a name or address, maybe a port)
    /// names this gateway.
    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // [v6 address]:port
            Some(rest) => {
                return rest
                    .split(']')
                    .next()
                    .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
            }
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Room for one more stream or WebSocket, held as long as it is open;
    /// 503 when all are taken, so a few clients cannot starve the rest.
    fn stream_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Overloaded,
                format!(
                    "{} streams and WebSockets are open, the most this gateway serves \
                     (raise it with max_streams)",
                    self.max_streams
                ),
            )
        })
    }
}

impl Gateway {
    /// A gateway whose requests go to the broker through `bus`, a client
    /// of its own: the gateway joins and leaves channels on it as HTTP
    /// clients come and the broker's news says.
    pub fn builder(bus: BrokerClient) -> GatewayBuilder {
        GatewayBuilder {
            bus,
            secret: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            max_body: DEFAULT_MAX_BODY_BYTES,
            max_streams: DEFAULT_MAX_STREAMS,
            hosts: Vec::new(),
        }
    }

    /// The gateway as an axum router, to serve with axum, nest in a larger
    /// application, or wrap in tower layers.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/v1/channels/{channel}/call/{method}", post(call::call))
            .route(
                "/v1/channels/{channel}/stream/{method}",
                get(events::stream_items),
            )
            .route(
                "/v1/channels/{channel}/subscribe/{pattern}",
                get(events::subscribe),
            )
            .route("/v1/ws", get(socket::upgrade))
            .route("/", get(status::page))
            .route("/v1/status", get(status::status))
            .route("/v1/status/events", get(status::status_events))
            .route("/v1/openapi.json", get(openapi))
            .fallback(no_such_endpoint)
            .layer(middleware::from_fn_with_state(
                self.shared.clone(),
                require_secret,
            ))
            .layer(middleware::from_fn_with_state(
                self.shared.clone(),
                same_origin,
            ))
            .layer(DefaultBodyLimit::max(self.shared.max_message));
        api.with_state(self.shared.clone())
    }

    /// Serve HTTP on `listener` until `shutdown` completes; then the
    /// server-sent event streams and WebSockets end, and the calls in
    /// progress finish (within the call timeout). Serve a gateway once:
    /// its streams end for good with it.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let closing = self.shared.closing.clone();
        let signal = async move {
            shutdown.await;
            closing.cancel();
        };
        axum::serve(listener, self.router())
            .with_graceful_shutdown(signal)
            .await
    }
}

impl GatewayBuilder {
    /// Take only requests that carry `secret` as `Authorization: Bearer
    /// <secret>` (the broker's shared secret, so that what the broker
    /// protects the gateway protects too); others get 401, or 403 for a
    /// wrong one.
    pub fn secret(mut self, secret: SharedSecret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// How long a call may take before it is answered 504. Default:
    /// [`DEFAULT_CALL_TIMEOUT`].
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The largest request body taken; larger ones are answered 413.
    /// Default: [`DEFAULT_MAX_BODY_BYTES`].
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most server-sent event streams and WebSockets open at once;
    /// more are answered 503. Each holds one of the gateway's broker
    /// client's calls in flight while it streams. Default:
    /// [`DEFAULT_MAX_STREAMS`].
    pub fn max_streams(mut self, streams: usize) -> Self {
        self.max_streams = streams.max(1);
        self
    }

    /// Take requests sent to `host` (a DNS name, e.g. `bus.example.com`)
    /// besides those sent to an address or `localhost`, which are always
    /// taken; others are refused, so that a web page whose own name
    /// resolves to this machine cannot reach the gateway through the
    /// visitor's browser (DNS rebinding).
    pub fn allow_host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    /// The gateway, ready to serve. Call within a tokio runtime: it starts
    /// following the broker's news about the channels it joins.
    pub fn build(self) -> Gateway {
        Gateway {
            shared: Arc::new(Shared {
                channels: Channels::new(self.bus),
                secret: self.secret,
                call_timeout: self.call_timeout,
                max_message: self.max_body,
                closing: CancellationToken::new(),
                streams: Arc::new(tokio::sync::Semaphore::new(self.max_streams)),
                max_streams: self.max_streams,
                hosts: self.hosts,
                status: status::StatusFeed::default(),
            }),
        }
    }
}

/// Any other path: a JSON error like every other.
async fn no_such_endpoint(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        ErrorCode::MethodNotFound,
        format!("no endpoint {} (see /v1/openapi.json)", uri.path()),
    )
}

/// Refuse a request a browser sends from another site's page: a page may
/// post forms and open WebSockets anywhere, and the gateway may be
/// reachable only from this machine or network. A request naming no
/// origin (curl, programs) or this gateway's own (its status page) passes.
/// The host it was sent to must be an address, `localhost` or a name
/// allowed ([`GatewayBuilder::allow_host`]): a site whose name its DNS
/// turns into this machine's address is not this gateway's site.
async fn same_origin(
    State(gateway): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !gateway.host_allowed(host) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            ErrorCode::Unauthorized,
            format!(
                "host {host:?} is not this gateway's (allow it with allow_host / --allow-host)"
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).map(|h| h.as_bytes());
        let origin_host = origin
            .as_bytes()
            .split(|b| *b == b'/')
            .nth(2)
            .filter(|h| !h.is_empty());
        if origin_host.is_none() || origin_host != host {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                ErrorCode::Unauthorized,
                format!(
                    "requests from another site's pages are refused (Origin: {})",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            ));
        }
    }
    Ok(next.run(request).await)
}

/// Refuse a request without the secret, when there is one.
async fn require_secret(
    State(gateway): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(secret) = &gateway.secret {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..]);
        match token {
            None => {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "this gateway takes the broker's secret: Authorization: Bearer <secret>".into(),
                ))
            }
            Some(token) if !secret.is(token) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    ErrorCode::Unauthorized,
                    "wrong secret".into(),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(next.run(request).await)
}

/// The gateway's API, described from its handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "busline gateway", description = "Call a busline broker's channel methods over HTTP."),
    paths(
        call::call,
        events::stream_items,
        events::subscribe,
        socket::upgrade,
        status::page,
        status::status,
        status::status_events,
        openapi
    ),
    components(schemas(ErrorReply, ErrorDetail)),
    modifiers(&BearerScheme),
)]
struct ApiDoc;

/// Names the `bearer` security scheme the handlers refer to.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        api.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// This API's OpenAPI description.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", body = Object)),
    security((), ("bearer" = [])),
)]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
