//! Volo Thrift: the context travels in the TTHeader, through Volo's
//! metainfo. The client writes `traceparent`, `tracestate` and `baggage` as
//! transient values (sent to the next hop only); the server reads them from
//! the upstream values Volo decoded from the TTHeader.

use metainfo::{Forward, MetaInfo, METAINFO};
use motore::{layer::Layer, service::Service};
use opentelemetry::propagation::{Extractor, Injector};
use volo::context::Context;

use super::ip;
use rpc_ext_core::{thrift::ThriftErrorKind, Side};

use crate::{propagation::limit, ActiveCall, CallInfo, Outcome, RpcSystem, RpcTracing};

/// Reads propagation fields from the upstream values of Volo's metainfo
/// (what the caller sent in the TTHeader), with the same size limits as for
/// headers.
#[derive(Debug)]
pub struct MetaInfoExtractor<'a>(pub &'a MetaInfo);

impl Extractor for MetaInfoExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get_all_upstreams()?.get(key)?.as_str();
        (value.len() <= limit(key) && value.is_ascii()).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .get_all_upstreams()
            .map(|values| values.keys().map(|k| k.as_str()).collect())
            .unwrap_or_default()
    }
}

/// Writes propagation fields as transient metainfo values, which Volo sends
/// to the next hop in the TTHeader.
#[derive(Debug)]
pub struct MetaInfoInjector<'a>(pub &'a mut MetaInfo);

impl Injector for MetaInfoInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set_transient(key.to_owned(), value);
    }
}

/// Traces every call through a Volo Thrift service.
///
/// Declared exceptions (`throws`) are answers, not failures: only
/// application, transport and protocol errors, and business errors, mark
/// the span as an error.
///
/// ```
/// use rpc_ext_tracing::{volo::ThriftTracingLayer, RpcTracing};
///
/// let tracing = RpcTracing::builder().build();
/// // server: ThriftEchoServer::new(handler).layer_front(ThriftTracingLayer::server(&tracing))
/// // client: ThriftEchoClientBuilder::new("echo").layer_outer(ThriftTracingLayer::client(&tracing))
/// let (server, client) = (ThriftTracingLayer::server(&tracing), ThriftTracingLayer::client(&tracing));
/// # let _ = (server, client);
/// ```
#[derive(Debug, Clone)]
pub struct ThriftTracingLayer {
    tracing: RpcTracing,
    side: Side,
}

impl ThriftTracingLayer {
    /// Server side: continue the caller's trace from the TTHeader.
    #[must_use]
    pub fn server(tracing: &RpcTracing) -> Self {
        Self {
            tracing: tracing.clone(),
            side: Side::Server,
        }
    }

    /// Client side: a child of the current context, sent in the TTHeader.
    #[must_use]
    pub fn client(tracing: &RpcTracing) -> Self {
        Self {
            tracing: tracing.clone(),
            side: Side::Client,
        }
    }

    fn start(&self, info: &CallInfo<'_>) -> ActiveCall {
        let started = METAINFO.try_with(|metainfo| {
            if self.side.is_server() {
                self.tracing
                    .start_server(info, &MetaInfoExtractor(&metainfo.borrow()))
            } else {
                self.tracing
                    .start_client(info, &mut MetaInfoInjector(&mut metainfo.borrow_mut()))
            }
        });
        // Outside a metainfo scope nothing can be carried; still trace the call.
        started.unwrap_or_else(|_| {
            if self.side.is_server() {
                self.tracing.start_server(info, &NoFields)
            } else {
                self.tracing.start_client(info, &mut NoFields)
            }
        })
    }
}

struct NoFields;

impl Extractor for NoFields {
    fn get(&self, _: &str) -> Option<&str> {
        None
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

impl Injector for NoFields {
    fn set(&mut self, _: &str, _: String) {}
}

impl<S> Layer<S> for ThriftTracingLayer {
    type Service = ThriftTracingService<S>;

    fn layer(self, inner: S) -> Self::Service {
        ThriftTracingService { inner, layer: self }
    }
}

/// The service made by [`ThriftTracingLayer`].
#[derive(Debug, Clone)]
pub struct ThriftTracingService<S> {
    inner: S,
    layer: ThriftTracingLayer,
}

impl<Cx, Req, S> Service<Cx, Req> for ThriftTracingService<S>
where
    Cx: Context + Send + 'static,
    Req: Send + 'static,
    S: Service<Cx, Req> + Send + Sync + 'static,
    S::Error: ThriftErrorKind,
    S::Response: Send,
{
    type Response = S::Response;
    type Error = S::Error;

    async fn call(&self, cx: &mut Cx, request: Req) -> Result<Self::Response, Self::Error> {
        let call = {
            let rpc = cx.rpc_info();
            let info = CallInfo {
                system: RpcSystem::Thrift,
                service: rpc.callee().service_name_ref(),
                method: rpc.method().as_str(),
                server_addr: if self.layer.side.is_server() {
                    None
                } else {
                    ip(rpc.callee().address())
                },
                peer_addr: if self.layer.side.is_server() {
                    ip(rpc.caller().address())
                } else {
                    ip(rpc.callee().address())
                },
                request_size: None,
            };
            self.layer.start(&info)
        };
        let result = call.run(self.inner.call(cx, request)).await;
        let outcome = match &result {
            Ok(_) => Outcome::default(),
            Err(error) => Outcome {
                error_type: Some(error.error_kind().into()),
                ..Outcome::default()
            },
        };
        call.finish(&outcome);
        result
    }
}
