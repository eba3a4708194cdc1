//! The serve loop: accepts connections and drives hyper on each, with what `axum::serve`
//! lacks against slow or hostile clients:
//!
//! - caps on open connections in all (`SPELLHOST_HTTP_CONNECTIONS_MAX`) and per client address
//!   (`SPELLHOST_HTTP_CONNECTIONS_PER_IP_MAX`; trusted proxies count only in the total): the
//!   connection over a cap is answered `503 overloaded` or `429 rate_limited` and closed;
//! - a header-read timeout from a request's first byte to the end of its headers, an idle
//!   timeout for a connection with no request in flight and no bytes moving, both watched
//!   per connection; a body-read timeout from the end of the headers to the end of the body,
//!   extended by what has arrived at a minimum rate (`408 request_timeout`);
//! - the one error shape for what hyper answers by itself: a request it cannot parse (a
//!   garbage request line, a malformed header, conflicting `Content-Length`s), a target over
//!   its fixed 65 534 bytes, headers over its buffer. hyper 1.x writes those responses itself
//!   (an empty body) with no hook to replace them; the connection's writer recognizes them
//!   (a 400/414/431 head without our `x-trace-id`, the last thing written on a connection
//!   hyper is closing) and writes the JSON error in their place.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::client_ip;
use super::hygiene::{self, BodyTimedOut};
use crate::App;
use crate::config::HttpConfig;
use crate::error::Code;

/// Refusals written at once (each waits up to a second for a slow reader); past this an
/// over-cap connection is closed without an answer.
const REFUSAL_WRITERS_MAX: usize = 64;
/// How long a refusal may take to be written and its request drained.
const REFUSAL_TIME_MAX: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, closes idle
/// connections, and returns once every connection has finished its requests in flight.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::new(&app));
    let pruner = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(super::rate_limit::PRUNE_INTERVAL);
            loop {
                tick.tick().await;
                app.rate_limits.prune();
            }
        })
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let connections = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors (or a connection reset before it was
                    // accepted): the cap should prevent the first; wait rather than spin.
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let admitted = match shared.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                shared.refuse(stream, refusal);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stopped = stopped.clone();
        connections.spawn(async move {
            shared.connection(stream, peer, stopped).await;
            drop(admitted);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    connections.close();
    connections.wait().await;
    pruner.abort();
    Ok(())
}

/// What every connection shares.
struct Shared {
    app: App,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    config: HttpConfig,
    connections: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refusal_writers: Arc<Semaphore>,
    security_headers: Arc<[(HeaderName, HeaderValue)]>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Total,
    PerAddress,
}

/// An admitted connection's place in the caps, given back on drop.
struct Admitted {
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    /// `None` for a trusted proxy (not counted per address).
    bucket: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.app.metrics.http_connections_open.dec();
        let Some(bucket) = self.bucket else { return };
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&bucket) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&bucket);
            }
        }
    }
}

impl Shared {
    fn new(app: &App) -> Self {
        let config = app.config.http.clone();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Timeouts are ours (the per-connection watchdog): hyper's header-read timer would
        // also cut idle keep-alive connections at the header timeout.
        builder.http1().keep_alive(true);
        Shared {
            app: app.clone(),
            router: super::router(app.clone()),
            builder,
            connections: Arc::new(Semaphore::new(config.connections_max)),
            per_ip: Mutex::new(HashMap::new()),
            refusal_writers: Arc::new(Semaphore::new(REFUSAL_WRITERS_MAX)),
            security_headers: hygiene::security_headers(&config).into(),
            config,
        }
    }

    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refusal> {
        let permit = self
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        let bucket = if client_ip::is_trusted(peer, &self.config.trusted_proxies) {
            None
        } else {
            let bucket = client_ip::bucket(peer);
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_ip.entry(bucket).or_insert(0);
            if *count >= self.config.connections_per_ip_max {
                return Err(Refusal::PerAddress);
            }
            *count += 1;
            Some(bucket)
        };
        self.app.metrics.http_connections_open.inc();
        Ok(Admitted {
            shared: self.clone(),
            _permit: permit,
            bucket,
        })
    }

    /// Answers a connection over a cap and closes it, in the background and within
    /// [`REFUSAL_TIME_MAX`]; without a free writer, closes it at once.
    fn refuse(&self, mut stream: TcpStream, refusal: Refusal) {
        let (reason, status, code, message) = match refusal {
            Refusal::Total => (
                "connections_total",
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Overloaded,
                "the server has too many open connections; retry shortly",
            ),
            Refusal::PerAddress => (
                "connections_per_address",
                StatusCode::TOO_MANY_REQUESTS,
                Code::RateLimited,
                "too many open connections from your address; reuse or close some",
            ),
        };
        self.app
            .metrics
            .http_connections_closed
            .with_label_values(&[reason])
            .inc();
        let Ok(writer) = self.refusal_writers.clone().try_acquire_owned() else {
            return;
        };
        let response = raw_error(status, code, message, &self.security_headers);
        tokio::spawn(async move {
            let _writer = writer;
            let _ = tokio::time::timeout(REFUSAL_TIME_MAX, async {
                stream.write_all(&response).await?;
                stream.shutdown().await?;
                // Read what the client sent, so that closing does not reset the connection
                // before it has read the answer.
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                io::Result::Ok(())
            })
            .await;
        });
    }

    /// Serves one connection until it ends, a timeout closes it, or the server shuts down.
    async fn connection(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let activity = Arc::new(Activity::new());
        let io = Tracked {
            inner: stream,
            activity: activity.clone(),
            replacement: None,
            security_headers: self.security_headers.clone(),
            app: self.app.clone(),
        };
        let service = {
            let shared = self.clone();
            let activity = activity.clone();
            hyper::service::service_fn(move |request: Request<Incoming>| {
                shared.request(request, peer, activity.clone())
            })
        };
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut shutting_down = false;
        let mut next_check = self
            .config
            .header_read_timeout
            .min(self.config.idle_timeout);
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "connection ended with an error");
                    }
                    break;
                }
                () = tokio::time::sleep(next_check) => {
                    match activity.verdict(&self.config) {
                        Ok(wait) => next_check = wait,
                        Err(reason) => {
                            self.app.metrics.http_connections_closed.with_label_values(&[reason]).inc();
                            break;
                        }
                    }
                }
                _ = stopped.changed(), if !shutting_down => {
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }

    /// One request: the peer's address and the body's deadline for the router.
    fn request(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        activity: Arc<Activity>,
    ) -> impl Future<Output = Result<Response<axum::body::Body>, Infallible>> + use<> {
        let in_flight = InFlight::start(activity);
        let timed_out = BodyTimedOut::default();
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(timed_out.clone());
        let base_deadline = Instant::now() + self.config.body_read_timeout;
        let request = request.map(|body| DeadlineBody {
            inner: body,
            base_deadline,
            received_bytes: 0,
            sleep: None,
            timed_out,
        });
        let router = self.router.clone();
        async move {
            use tower::ServiceExt as _;
            let response = router.oneshot(request).await;
            drop(in_flight);
            response
        }
    }
}

/// What a connection's watchdog knows: when bytes last moved, when the head of a request
/// started arriving, how many requests are in flight. Times are milliseconds since the
/// connection opened.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    head_started_ms: AtomicU64,
    in_flight: AtomicUsize,
}

const NO_HEAD: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NO_HEAD),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started_ms.compare_exchange(
                NO_HEAD,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn wrote(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long until the next check, or why the connection must close now.
    fn verdict(&self, config: &HttpConfig) -> Result<Duration, &'static str> {
        let now = self.now_ms();
        let check_again = config.header_read_timeout.min(config.idle_timeout);
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // The body's own deadline and the handler bound a request in flight.
            return Ok(check_again);
        }
        let head = self.head_started_ms.load(Ordering::Relaxed);
        let (since, limit, reason) = if head == NO_HEAD {
            (
                self.last_ms.load(Ordering::Relaxed),
                config.idle_timeout,
                "idle_timeout",
            )
        } else {
            (head, config.header_read_timeout, "header_read_timeout")
        };
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let elapsed = now.saturating_sub(since);
        if elapsed >= limit_ms {
            return Err(reason);
        }
        Ok(Duration::from_millis(limit_ms - elapsed).min(check_again))
    }
}

/// A request in flight on its connection, from its head to its response.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_started_ms.store(NO_HEAD, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.wrote();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The slowest a large body may arrive once its base timeout is spent: 64 KiB/s (about
/// 0.5 Mbit/s) lets the largest publish (~21 MiB) through a slow uplink in under six minutes,
/// while a stalled or trickling body gets no more than the base timeout.
const BODY_BYTES_PER_SECOND_MIN: u64 = 64 * 1024;

/// A request body that must arrive within `SPELLHOST_HTTP_BODY_READ_TIMEOUT_SECS` of its head,
/// plus the time what has arrived so far takes at [`BODY_BYTES_PER_SECOND_MIN`]. Past that,
/// reading fails and the request is answered `408` (see [`hygiene`]).
struct DeadlineBody {
    inner: Incoming,
    base_deadline: Instant,
    received_bytes: u64,
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: BodyTimedOut,
}

impl DeadlineBody {
    fn deadline(&self) -> Instant {
        self.base_deadline + body_time_earned(self.received_bytes)
    }
}

/// The time a body has earned beyond its base timeout by what has arrived.
fn body_time_earned(received_bytes: u64) -> Duration {
    Duration::from_millis(received_bytes.saturating_mul(1000) / BODY_BYTES_PER_SECOND_MIN)
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                let length = data.map_or(0, |bytes| bytes.len());
                this.received_bytes = this
                    .received_bytes
                    .saturating_add(u64::try_from(length).unwrap_or(u64::MAX));
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline();
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        ready!(sleep.as_mut().poll(cx));
        this.timed_out.set();
        Poll::Ready(Some(Err("the request body did not arrive in time".into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, noting activity for the watchdog, and writing the one error
/// shape in place of hyper's own bodiless error responses.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// The JSON response being written instead of hyper's, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    security_headers: Arc<[(HeaderName, HeaderValue)]>,
    app: App,
}

impl Tracked {
    /// Writes what is left of the replacement.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written == bytes.len() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            self.activity.wrote();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.activity.read();
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacement.is_none()
            && let Some(status) = bodiless_hyper_error(buf)
        {
            this.app
                .metrics
                .http_connections_closed
                .with_label_values(&["unparseable"])
                .inc();
            let (code, message) = match status {
                StatusCode::URI_TOO_LONG => (
                    Code::UriTooLong,
                    "the request target is longer than 65534 bytes",
                ),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                    (Code::HeadersTooLarge, "the request headers are too large")
                }
                _ => (
                    Code::BadRequest,
                    "the request is not valid HTTP/1.1 (request line, header or framing)",
                ),
            };
            this.replacement = Some((raw_error(status, code, message, &this.security_headers), 0));
        }
        if this.replacement.is_some() {
            // hyper closes the connection after its error response: what it writes is
            // replaced as a whole.
            ready!(this.drain(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if n > 0 {
            this.activity.wrote();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// Not vectored: hyper then writes each response head in one buffer, which is what the
    /// recognition of its own error responses needs.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The status of a response head that hyper wrote by itself for a request it could not
/// read: 400, 414 or 431, no body, and no `x-trace-id` (every response of the router has
/// one).
fn bodiless_hyper_error(buf: &[u8]) -> Option<StatusCode> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let status = match rest.get(..4)? {
        b"400 " => StatusCode::BAD_REQUEST,
        b"414 " => StatusCode::URI_TOO_LONG,
        b"431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = buf[..end].to_ascii_lowercase();
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    (has(b"\r\ncontent-length: 0") && !has(b"\r\nx-trace-id:")).then_some(status)
}

/// A complete HTTP/1.1 error response in the one shape, closing the connection.
fn raw_error(
    status: StatusCode,
    code: Code,
    message: &str,
    security_headers: &[(HeaderName, HeaderValue)],
) -> Vec<u8> {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let body = serde_json::json!({
        "error": {"code": code.as_str(), "message": message, "trace_id": trace_id}
    })
    .to_string();
    let mut response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nx-trace-id: {trace_id}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        response.extend_from_slice(b"retry-after: 1\r\n");
    }
    for (name, value) in security_headers {
        response.extend_from_slice(name.as_str().as_bytes());
        response.extend_from_slice(b": ");
        response.extend_from_slice(value.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
    response.extend_from_slice(body.as_bytes());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_are_recognized_and_ours_are_not() {
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(
            bodiless_hyper_error(hyper_414),
            Some(StatusCode::URI_TOO_LONG)
        );
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            bodiless_hyper_error(hyper_400),
            Some(StatusCode::BAD_REQUEST)
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                     content-length: 0\r\nx-trace-id: abc\r\n\r\n";
        assert_eq!(bodiless_hyper_error(ours), None);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(bodiless_hyper_error(ok), None);
        assert_eq!(bodiless_hyper_error(b"HTTP/1.1 400 Bad"), None);
    }

    #[test]
    fn raw_errors_carry_the_one_shape() {
        let bytes = raw_error(StatusCode::URI_TOO_LONG, Code::UriTooLong, "too long", &[]);
        let text = String::from_utf8(bytes).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["error"]["code"], "uri_too_long");
    }

    #[test]
    fn a_body_earns_time_by_what_has_arrived_never_by_waiting() {
        assert_eq!(body_time_earned(0), Duration::ZERO);
        assert_eq!(body_time_earned(1), Duration::ZERO);
        assert_eq!(body_time_earned(64 * 1024), Duration::from_secs(1));
        // The largest publish (~21 MiB) earns under six minutes.
        let largest = crate::supply_chain::MODULE_BYTES_MAX + crate::supply_chain::SBOM_BYTES_MAX;
        let earned = body_time_earned(u64::try_from(largest).expect("fits"));
        assert!(earned < Duration::from_secs(360), "{earned:?}");
        assert_eq!(body_time_earned(u64::MAX), body_time_earned(u64::MAX - 1));
    }

    #[test]
    fn the_watchdog_closes_partial_heads_and_idle_connections_only() {
        let mut config = crate::config::Config::from_vars(&[])
            .expect("defaults")
            .http;
        config.header_read_timeout = Duration::ZERO;
        config.idle_timeout = Duration::from_secs(3600);
        let activity = Activity::new();
        assert!(
            activity.verdict(&config).is_ok(),
            "idle, within its timeout"
        );
        activity.read();
        assert_eq!(activity.verdict(&config), Err("header_read_timeout"));
        let in_flight = InFlight::start(Arc::new(Activity::new()));
        assert!(in_flight.0.verdict(&config).is_ok(), "a request in flight");
        config.idle_timeout = Duration::ZERO;
        drop(in_flight);
        assert_eq!(Activity::new().verdict(&config), Err("idle_timeout"));
    }
}
