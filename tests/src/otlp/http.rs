//! OTLP/HTTP with binary protobuf bodies: `POST /v1/traces` and
//! `POST /v1/metrics`, plain or gzip'd, answered as the OTLP spec says.

use std::{fmt::Debug, io::Read};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{header, HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::post,
    serve::Listener,
    Router,
};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use prost::Message;
use tokio::sync::watch;

use super::{
    collector::{Arrival, Collector},
    Protocol,
};

const PROTOBUF: &str = "application/x-protobuf";

/// Exporters batch at most a few thousand spans; this is far above that.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Serves the OTLP/HTTP routes on `listener` until `stop` turns true.
pub(super) fn spawn<L>(listener: L, collector: Collector, mut stop: watch::Receiver<bool>)
where
    L: Listener,
    L::Addr: Debug,
{
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(collector);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    tokio::spawn(async move {
        let _ = server.await;
    });
}

async fn traces(State(collector): State<Collector>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, arrival) = match decode::<ExportTraceServiceRequest>(&headers, &body) {
        Ok(decoded) => decoded,
        Err(refusal) => return refusal.into_response(),
    };
    match collector.export_traces(request, arrival).await {
        Ok(response) => protobuf(&response),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "collector overloaded (test fault)",
        )
            .into_response(),
    }
}

async fn metrics(State(collector): State<Collector>, headers: HeaderMap, body: Bytes) -> Response {
    match decode::<ExportMetricsServiceRequest>(&headers, &body) {
        Ok((request, _)) => protobuf(&collector.export_metrics(request)),
        Err(refusal) => refusal.into_response(),
    }
}

/// Names the routes, for exporters posting to the base URL or elsewhere.
async fn not_found(method: Method, uri: Uri) -> Refusal {
    refuse(
        StatusCode::NOT_FOUND,
        format!("no OTLP route {method} {uri}; POST /v1/traces or /v1/metrics"),
    )
}

/// The request message of a body, or the response refusing it: 415 for a
/// content type or encoding the receiver does not speak, 400 for a body
/// that does not decompress or decode.
fn decode<M: Message + Default>(headers: &HeaderMap, body: &[u8]) -> Result<(M, Arrival), Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with(PROTOBUF) {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {content_type:?}; this receiver takes {PROTOBUF}"),
        ));
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let gzip = match encoding {
        "gzip" => true,
        "identity" => false,
        other => {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content encoding {other:?}; this receiver takes gzip"),
            ))
        }
    };
    let mut inflated = Vec::new();
    let body = if gzip {
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut inflated)
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
        &inflated[..]
    } else {
        body
    };
    let message = M::decode(body)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("bad protobuf body: {e}")))?;
    let arrival = Arrival {
        protocol: Protocol::HttpProtobuf,
        gzip,
    };
    Ok((message, arrival))
}

fn protobuf(message: &impl Message) -> Response {
    ([(header::CONTENT_TYPE, PROTOBUF)], message.encode_to_vec()).into_response()
}

/// A status and the reason for it, sent as the response body.
type Refusal = (StatusCode, String);

fn refuse(status: StatusCode, reason: String) -> Refusal {
    (status, reason)
}
