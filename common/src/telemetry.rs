//! Prometheus metrics of a p2pfs process: the recorder, the `/metrics`
//! endpoint on the process's one HTTP listener ([`crate::http`]), and the
//! instrumentation every tarpc server passes through ([`Instrumented`],
//! applied by `serve_tarpc!`).
//!
//! Metrics go through the `metrics` facade. Until [`start`] installs the
//! Prometheus recorder (a process given `--metrics-addr`), every `counter!`,
//! `gauge!` and `histogram!` is a no-op, so a process without a metrics
//! address pays nothing and in-process tests need no recorder.
//!
//! Names follow Prometheus conventions: `p2pfs_` prefix, base units in the
//! name (`_bytes`, `_seconds`), `_total` on counters. docs/METRICS.md lists
//! every metric; the names shared by several crates are the constants here.

use crate::http::{Handler, HttpServer, Request, Response};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::ser::{self, Impossible, Serialize, Serializer};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tarpc::server::Serve;
use tarpc::RequestName;
use tarpc::ServerError;

/// Requests received by a tarpc server (counter; labels `service`, `rpc`).
pub const RPC_REQUESTS: &str = "p2pfs_rpc_requests_total";
/// Requests that ended in an error (counter; labels `service`, `rpc`,
/// `kind`: the error enum's variant, e.g. `NotFound`, or `Cancelled` for a
/// request dropped before it answered, e.g. past its deadline).
pub const RPC_ERRORS: &str = "p2pfs_rpc_errors_total";
/// Time from a request's arrival to its answer (histogram, seconds; labels
/// `service`, `rpc`).
pub const RPC_DURATION: &str = "p2pfs_rpc_duration_seconds";
/// Requests being handled now (gauge; label `service`).
pub const RPC_IN_FLIGHT: &str = "p2pfs_rpc_in_flight";

/// Bucket bounds of every `_seconds` histogram: 100 µs to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (bounds the memory held by samples).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Errors of [`start`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The HTTP address could not be bound.
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    /// Another metrics recorder was installed in this process first.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

/// Installs the process-wide Prometheus recorder (once; later calls return
/// the same handle).
///
/// Errors: [`TelemetryError::Recorder`] if some other recorder was
/// installed first.
pub fn install() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(TelemetryError::Recorder)
}

/// Sets gauges from live state just before a scrape renders them.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// What a process serves on its HTTP address besides `/metrics`.
#[derive(Clone, Default)]
pub struct Endpoint {
    /// Called before each `/metrics` render (gauges read from the
    /// process's state: stored chunks, peers by state, …).
    pub refresh: Option<Refresh>,
    /// Every other path (dirsvc's status page); `None`: 404.
    pub pages: Option<Handler>,
}

/// Installs the recorder ([`install`]), binds `listen` and serves
/// `GET /metrics` (Prometheus text format) and `endpoint.pages` on it;
/// starts the upkeep task that folds histogram samples every
/// [`UPKEEP_INTERVAL`]. Runs on the current tokio runtime until the
/// returned server is dropped or shut down.
///
/// Errors: [`TelemetryError::Recorder`], [`TelemetryError::Bind`].
pub async fn start(listen: &str, endpoint: Endpoint) -> Result<HttpServer, TelemetryError> {
    let prom = install()?;
    let upkeep = prom.clone();
    let Endpoint { refresh, pages } = endpoint;
    let handler: Handler = Arc::new(move |req: Request| {
        let (prom, refresh, pages) = (prom.clone(), refresh.clone(), pages.clone());
        Box::pin(async move {
            if req.path == "/metrics" {
                if let Some(r) = refresh {
                    r().await;
                }
                return Response::ok(PROMETHEUS_TEXT, prom.render());
            }
            match pages {
                Some(p) => p(req).await,
                None => Response::not_found(),
            }
        })
    });
    let server = HttpServer::bind(listen, handler).await?;
    // Stops with the server's runtime; harmless if it outlives the server.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_INTERVAL).await;
            upkeep.run_upkeep();
        }
    });
    tracing::info!(addr = %server.addr(), "metrics served on http://{}/metrics", server.addr());
    Ok(server)
}

/// A tarpc [`Serve`] that counts every request by method, its errors by
/// kind and its latency (the metrics [`RPC_REQUESTS`], [`RPC_ERRORS`],
/// [`RPC_DURATION`], [`RPC_IN_FLIGHT`]). `serve_tarpc!` wraps every
/// server in it, so each RPC is instrumented in this one place.
#[derive(Clone, Debug)]
pub struct Instrumented<S> {
    inner: S,
}

impl<S> Instrumented<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Instrumented { inner }
    }
}

/// Splits a tarpc request name `Service.method` into its parts.
fn split_name(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((s, m)) => (s.to_string(), m.to_string()),
        None => (String::new(), name.to_string()),
    }
}

/// Records the end of one request; a request dropped before it answered
/// (deadline passed, connection closed) counts as a `Cancelled` error.
struct Finish {
    service: String,
    rpc: String,
    started: Instant,
    done: bool,
}

impl Finish {
    fn record(&mut self, error: Option<&'static str>) {
        self.done = true;
        let (service, rpc) = (self.service.clone(), self.rpc.clone());
        metrics::histogram!(RPC_DURATION, "service" => service.clone(), "rpc" => rpc.clone())
            .record(self.started.elapsed().as_secs_f64());
        if let Some(kind) = error {
            metrics::counter!(RPC_ERRORS, "service" => service.clone(), "rpc" => rpc, "kind" => kind)
                .increment(1);
        }
        metrics::gauge!(RPC_IN_FLIGHT, "service" => service).decrement(1.0);
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if !self.done {
            self.record(Some("Cancelled"));
        }
    }
}

impl<S> Serve for Instrumented<S>
where
    S: Serve,
    S::Resp: Serialize,
{
    type Req = S::Req;
    type Resp = S::Resp;

    async fn serve(self, ctx: tarpc::context::Context, req: Self::Req) -> Result<Self::Resp, ServerError> {
        let (service, rpc) = split_name(req.name());
        metrics::counter!(RPC_REQUESTS, "service" => service.clone(), "rpc" => rpc.clone()).increment(1);
        metrics::gauge!(RPC_IN_FLIGHT, "service" => service.clone()).increment(1.0);
        let mut finish = Finish { service, rpc, started: Instant::now(), done: false };
        let r = self.inner.serve(ctx, req).await;
        let kind = match &r {
            Ok(resp) => error_kind(resp),
            Err(_) => Some("ServerError"),
        };
        finish.record(kind);
        r
    }
}

/// The error kind of a tarpc response: for a response whose method
/// returned `Err(e)`, the name of `e`'s enum variant (`NotFound`,
/// `Unauthorized`, …); `None` for `Ok` and for methods that do not return
/// a `Result`. Reads only the variant tags (never the payload, so a
/// response carrying a chunk costs nothing).
pub fn error_kind<T: Serialize + ?Sized>(resp: &T) -> Option<&'static str> {
    match resp.serialize(Probe { level: Level::Response }) {
        Err(Stop::Kind(k)) => Some(k),
        _ => None,
    }
}

/// Where [`Probe`] is in the response's shape.
#[derive(Clone, Copy)]
enum Level {
    /// The response enum (one newtype variant per method).
    Response,
    /// The method's return value (a `Result` if it can fail).
    Result,
    /// The error value (its variant is the kind).
    Error,
}

/// Why [`Probe`] stopped (it always stops early, by "failing").
#[derive(Debug)]
enum Stop {
    /// Found an error of this variant.
    Kind(&'static str),
    /// Not an error, or not a shape it understands.
    Other,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe stopped")
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop::Other
    }
}

/// A serializer that walks only enum tags: response variant → `Result`
/// variant → error variant.
struct Probe {
    level: Level,
}

macro_rules! refuse {
    ($($name:ident($($t:ty),*) -> $ret:ty;)*) => {
        $(fn $name(self, $(_: $t),*) -> Result<$ret, Stop> { Err(Stop::Other) })*
    };
}

impl Serializer for Probe {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Impossible<(), Stop>;
    type SerializeTuple = Impossible<(), Stop>;
    type SerializeTupleStruct = Impossible<(), Stop>;
    type SerializeTupleVariant = Impossible<(), Stop>;
    type SerializeMap = Impossible<(), Stop>;
    type SerializeStruct = Impossible<(), Stop>;
    type SerializeStructVariant = Impossible<(), Stop>;

    refuse! {
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Stop> {
        Err(Stop::Other)
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<(), Stop> {
        Err(self.stop_at(variant))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Stop> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        match self.level {
            Level::Response => value.serialize(Probe { level: Level::Result }),
            Level::Result if name == "Result" && variant == "Err" => {
                value.serialize(Probe { level: Level::Error })
            }
            Level::Result => Err(Stop::Other),
            Level::Error => Err(Stop::Kind(variant)),
        }
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Stop> {
        Err(self.stop_at(variant))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Stop> {
        Err(self.stop_at(variant))
    }
}

impl Probe {
    /// Why to stop at a variant with no newtype payload: the kind, if it
    /// is the error's.
    fn stop_at(&self, variant: &'static str) -> Stop {
        match self.level {
            Level::Error => Stop::Kind(variant),
            _ => Stop::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    enum Err1 {
        NotFound,
        Internal(String),
        Limit { what: u32 },
        Pair(u8, u8),
    }

    #[derive(Serialize)]
    enum Resp {
        Get(Result<Vec<u8>, Err1>),
        Hello(u32),
    }

    #[test]
    fn error_kind_names_the_error_variant_and_nothing_else() {
        assert_eq!(error_kind(&Resp::Get(Ok(vec![1; 1 << 20]))), None);
        assert_eq!(error_kind(&Resp::Hello(3)), None);
        assert_eq!(error_kind(&Resp::Get(Err(Err1::NotFound))), Some("NotFound"));
        assert_eq!(error_kind(&Resp::Get(Err(Err1::Internal("x".into())))), Some("Internal"));
        assert_eq!(error_kind(&Resp::Get(Err(Err1::Limit { what: 1 }))), Some("Limit"));
        assert_eq!(error_kind(&Resp::Get(Err(Err1::Pair(1, 2)))), Some("Pair"));
    }

    #[test]
    fn error_kind_reads_real_service_responses() {
        use crate::rpc::dir::{DirError, DirServiceResponse};
        use crate::rpc::peer::{PeerError, PeerServiceResponse};
        assert_eq!(error_kind(&DirServiceResponse::ListPeers(Err(DirError::NotFound))), Some("NotFound"));
        assert_eq!(error_kind(&DirServiceResponse::ListPeers(Ok(vec![]))), None);
        assert_eq!(error_kind(&PeerServiceResponse::Delete(Err(PeerError::NoSpace))), Some("NoSpace"));
    }

    #[test]
    fn request_names_split_into_service_and_method() {
        assert_eq!(split_name("DirService.lookup"), ("DirService".into(), "lookup".into()));
        assert_eq!(split_name("odd"), (String::new(), "odd".into()));
    }
}
