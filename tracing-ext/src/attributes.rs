//! The attributes a span starts with, per the conventions chosen: the
//! current RPC names, the names before v1.38, or both; HTTP names are the
//! same in every mode.

use std::borrow::Cow;

use opentelemetry::{KeyValue, StringValue};
use rpc_ext_core::semconv::{attr, old_attr, Conventions, OTHER};

use crate::{
    address, info::Host, recent, recent::CallNames, semconv, CallInfo, RequestId, RpcSystem, Side,
};

/// Room for a span's attributes: those of a gRPC call in the current
/// conventions (at most 7 at the start, status and error type at the end)
/// with room to spare, so the `Vec` grows only for HTTP servers seen from
/// every angle, both sets of names, or extra attributes.
pub(crate) const CAPACITY: usize = 12;

/// Where attributes go: the `Vec` a span starts with, or the span being
/// ended. One at a time: `extend` with an array costs an iterator per
/// attribute.
pub(crate) trait Attributes {
    /// Adds one attribute.
    fn push(&mut self, attribute: KeyValue);
}

impl Attributes for Vec<KeyValue> {
    fn push(&mut self, attribute: KeyValue) {
        Vec::push(self, attribute);
    }
}

/// How a span names the call's method.
pub(crate) enum Method<'a> {
    /// A method known to be real.
    Known(CallNames),
    /// A server's method not known yet: the full method, settled at the end.
    Pending(String),
    /// Recorded as `_OTHER`, with this as `rpc.method_original`.
    Other(Cow<'a, str>),
    /// An HTTP call: the names of its route and the normalized method.
    Http(CallNames, &'static str),
}

/// The attributes known when the call starts.
pub(crate) fn at_start(
    info: &CallInfo<'_>,
    method: &Method<'_>,
    side: Side,
    conventions: Conventions,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(CAPACITY);
    match method {
        Method::Http(names, normalized) => http(&mut attributes, info, names, normalized, side),
        _ => rpc(&mut attributes, info.system, method, conventions),
    }
    if let Some(host) = info.server_address {
        attributes.push(KeyValue::new(
            attr::SERVER_ADDRESS,
            match host {
                Host::Ip(ip) => recent::ip(ip),
                Host::Name(name) => recent::text(name),
            },
        ));
    }
    let port = info.server_port.or_else(|| {
        // An HTTP client's URL without a port goes to the scheme's.
        let url = info.url.as_ref()?;
        (info.system == RpcSystem::Http && !side.is_server() && url.authority.is_some())
            .then(|| address::default_port(url.scheme.unwrap_or("http")))?
    });
    if let Some(port) = port {
        attributes.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
    }
    if let Some(addr) = info.peer_addr {
        peer(&mut attributes, addr);
    }
    attributes
}

/// `network.peer.address` and `network.peer.port`.
pub(crate) fn peer(attributes: &mut impl Attributes, addr: std::net::SocketAddr) {
    attributes.push(KeyValue::new(
        attr::NETWORK_PEER_ADDRESS,
        recent::ip(addr.ip()),
    ));
    attributes.push(KeyValue::new(
        attr::NETWORK_PEER_PORT,
        i64::from(addr.port()),
    ));
}

/// The `x-request-id` a server call came in with, under the name the
/// conventions give a captured header (HTTP) or metadata key (RPC; gRPC
/// only before v1.38, which had no name for Thrift's).
pub(crate) fn request_id(
    attributes: &mut impl Attributes,
    id: &RequestId,
    system: RpcSystem,
    conventions: Conventions,
) {
    if system == RpcSystem::Http {
        attributes.push(KeyValue::new(
            semconv::HTTP_REQUEST_HEADER_X_REQUEST_ID,
            id.attribute_value(),
        ));
        return;
    }
    if conventions.current() {
        attributes.push(KeyValue::new(
            semconv::RPC_REQUEST_METADATA_X_REQUEST_ID,
            id.attribute_value(),
        ));
    }
    if conventions.old() && system == RpcSystem::Grpc {
        attributes.push(KeyValue::new(
            semconv::RPC_GRPC_REQUEST_METADATA_X_REQUEST_ID,
            id.attribute_value(),
        ));
    }
}

fn rpc(
    attributes: &mut Vec<KeyValue>,
    system: RpcSystem,
    method: &Method<'_>,
    conventions: Conventions,
) {
    if conventions.current() {
        attributes.push(KeyValue::new(attr::RPC_SYSTEM_NAME, system.as_str()));
    }
    if conventions.old() {
        attributes.push(KeyValue::new(old_attr::RPC_SYSTEM, system.as_str()));
    }
    match method {
        Method::Known(names) => known_method(attributes, names, conventions),
        Method::Other(raw) => other_method(attributes, raw.to_string().into(), conventions),
        // Named when the call ends.
        Method::Pending(_) | Method::Http(..) => {}
    }
}

/// `rpc.method` (and `rpc.service`) of a method known to be real. In
/// [`Conventions::Dup`] the key both sets share, `rpc.method`, carries the
/// current value, the full method.
pub(crate) fn known_method(
    attributes: &mut impl Attributes,
    names: &CallNames,
    conventions: Conventions,
) {
    let method = if conventions.current() {
        StringValue::from(names.full.clone())
    } else {
        StringValue::from(names.method.clone())
    };
    attributes.push(KeyValue::new(attr::RPC_METHOD, method));
    if conventions.old() {
        attributes.push(KeyValue::new(
            old_attr::RPC_SERVICE,
            StringValue::from(names.service.clone()),
        ));
    }
}

/// `rpc.method = _OTHER`, with the name the caller used as
/// `rpc.method_original` (a current name, so not before v1.38).
pub(crate) fn other_method(
    attributes: &mut impl Attributes,
    raw: StringValue,
    conventions: Conventions,
) {
    attributes.push(KeyValue::new(attr::RPC_METHOD, OTHER));
    if conventions.current() {
        attributes.push(KeyValue::new(attr::RPC_METHOD_ORIGINAL, raw));
    }
}

fn http(
    attributes: &mut Vec<KeyValue>,
    info: &CallInfo<'_>,
    names: &CallNames,
    normalized: &'static str,
    side: Side,
) {
    attributes.push(KeyValue::new(attr::HTTP_REQUEST_METHOD, normalized));
    if normalized == OTHER {
        attributes.push(KeyValue::new(
            attr::HTTP_REQUEST_METHOD_ORIGINAL,
            info.method.to_owned(),
        ));
    }
    if side.is_server() {
        if !names.service.is_empty() {
            attributes.push(KeyValue::new(
                attr::HTTP_ROUTE,
                StringValue::from(names.service.clone()),
            ));
        }
        let url = info.url.unwrap_or_default();
        attributes.push(KeyValue::new(
            attr::URL_SCHEME,
            match url.scheme {
                None | Some("http") => StringValue::from("http"),
                Some("https") => StringValue::from("https"),
                Some(other) => StringValue::from(other.to_owned()),
            },
        ));
        if !url.path.is_empty() {
            attributes.push(KeyValue::new(attr::URL_PATH, recent::text(url.path)));
        }
        if let Some(query) = url.query {
            attributes.push(KeyValue::new(attr::URL_QUERY, query.to_owned()));
        }
    } else if let Some(full) = info.url.as_ref().and_then(address::full_url) {
        attributes.push(KeyValue::new(attr::URL_FULL, full));
    }
}
