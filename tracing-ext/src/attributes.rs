//! The attributes a span starts with, per the conventions chosen: the
//! current RPC names, the names before v1.38, or both; HTTP names are the
//! same in every mode.

use std::borrow::Cow;

use opentelemetry::{KeyValue, StringValue, Value};
use rpc_ext_core::semconv::{attr, old_attr, Conventions, OTHER};

use crate::{
    address, info::Host, recent, recent::CallNames, semconv, CallInfo, RequestId, RpcSystem, Side,
};

/// Room for a span's attributes: those of a gRPC call in the current
/// conventions (at most 7 at the start, status and error type at the end)
/// with room to spare, so the `Vec` grows only for HTTP servers seen from
/// every angle, both sets of names, or extra attributes.
pub(crate) const CAPACITY: usize = 12;

/// Where attributes go: the `Vec` a span starts with, the span being
/// ended, or a fastrace span's properties. One at a time: `extend` with an
/// array costs an iterator per attribute. Keys are the conventions'
/// constants, so a fastrace property takes them without a copy.
pub(crate) trait Attributes {
    /// Adds one attribute.
    fn add(&mut self, key: &'static str, value: impl AttributeValue);
}

impl Attributes for Vec<KeyValue> {
    fn add(&mut self, key: &'static str, value: impl AttributeValue) {
        Vec::push(self, KeyValue::new(key, value));
    }
}

/// A value an attribute takes: what the OpenTelemetry SDK takes, and (for
/// fastrace, whose properties are text) its text, without a copy where it
/// is `'static` already.
pub(crate) trait AttributeValue: Into<Value> {
    /// The value as a fastrace property.
    #[cfg(feature = "fastrace")]
    fn into_text(self) -> Cow<'static, str>;
}

impl AttributeValue for &'static str {
    #[cfg(feature = "fastrace")]
    fn into_text(self) -> Cow<'static, str> {
        Cow::Borrowed(self)
    }
}

impl AttributeValue for Cow<'static, str> {
    #[cfg(feature = "fastrace")]
    fn into_text(self) -> Cow<'static, str> {
        self
    }
}

impl AttributeValue for String {
    #[cfg(feature = "fastrace")]
    fn into_text(self) -> Cow<'static, str> {
        Cow::Owned(self)
    }
}

impl AttributeValue for StringValue {
    #[cfg(feature = "fastrace")]
    fn into_text(self) -> Cow<'static, str> {
        Cow::Owned(self.into())
    }
}

impl AttributeValue for std::sync::Arc<str> {
    #[cfg(feature = "fastrace")]
    fn into_text(self) -> Cow<'static, str> {
        Cow::Owned(String::from(&*self))
    }
}

/// A request id: a one-string array (captured headers and metadata are
/// string arrays); as a property, the string.
impl AttributeValue for Value {
    #[cfg(feature = "fastrace")]
    fn into_text(self) -> Cow<'static, str> {
        match self {
            Value::Array(opentelemetry::Array::String(mut values)) if values.len() == 1 => {
                Cow::Owned(values.swap_remove(0).into())
            }
            other => Cow::Owned(other.as_str().into_owned()),
        }
    }
}

impl AttributeValue for i64 {
    /// Decimal digits written by hand: `to_string` goes through the
    /// formatting machinery, several times the cost for a port.
    #[cfg(feature = "fastrace")]
    fn into_text(self) -> Cow<'static, str> {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = self.unsigned_abs();
        loop {
            at -= 1;
            // `rest % 10` is a single digit.
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let mut text = String::with_capacity(digits.len() - at + 1);
        if self < 0 {
            text.push('-');
        }
        // ASCII digits only.
        text.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
        Cow::Owned(text)
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
    write_start(&mut attributes, info, method, side, conventions);
    attributes
}

/// Writes the attributes known when the call starts into `attributes`.
pub(crate) fn write_start(
    attributes: &mut impl Attributes,
    info: &CallInfo<'_>,
    method: &Method<'_>,
    side: Side,
    conventions: Conventions,
) {
    match method {
        Method::Http(names, normalized) => http(attributes, info, names, normalized, side),
        _ => rpc(attributes, info.system, method, conventions),
    }
    if let Some(host) = info.server_address {
        attributes.add(
            attr::SERVER_ADDRESS,
            match host {
                Host::Ip(ip) => recent::ip(ip),
                Host::Name(name) => recent::text(name),
            },
        );
    }
    let port = info.server_port.or_else(|| {
        // An HTTP client's URL without a port goes to the scheme's.
        let url = info.url.as_ref()?;
        (info.system == RpcSystem::Http && !side.is_server() && url.authority.is_some())
            .then(|| address::default_port(url.scheme.unwrap_or("http")))?
    });
    if let Some(port) = port {
        attributes.add(attr::SERVER_PORT, i64::from(port));
    }
    if let Some(addr) = info.peer_addr {
        peer(attributes, addr);
    }
}

/// `network.peer.address` and `network.peer.port`.
pub(crate) fn peer(attributes: &mut impl Attributes, addr: std::net::SocketAddr) {
    attributes.add(attr::NETWORK_PEER_ADDRESS, recent::ip(addr.ip()));
    attributes.add(attr::NETWORK_PEER_PORT, i64::from(addr.port()));
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
        attributes.add(
            semconv::HTTP_REQUEST_HEADER_X_REQUEST_ID,
            id.attribute_value(),
        );
        return;
    }
    if conventions.current() {
        attributes.add(
            semconv::RPC_REQUEST_METADATA_X_REQUEST_ID,
            id.attribute_value(),
        );
    }
    if conventions.old() && system == RpcSystem::Grpc {
        attributes.add(
            semconv::RPC_GRPC_REQUEST_METADATA_X_REQUEST_ID,
            id.attribute_value(),
        );
    }
}

fn rpc(
    attributes: &mut impl Attributes,
    system: RpcSystem,
    method: &Method<'_>,
    conventions: Conventions,
) {
    if conventions.current() {
        attributes.add(attr::RPC_SYSTEM_NAME, system.as_str());
    }
    if conventions.old() {
        attributes.add(old_attr::RPC_SYSTEM, system.as_str());
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
    if conventions.current() {
        attributes.add(attr::RPC_METHOD, names.full.clone());
    } else {
        attributes.add(attr::RPC_METHOD, names.method.clone());
    }
    if conventions.old() {
        attributes.add(old_attr::RPC_SERVICE, names.service.clone());
    }
}

/// `rpc.method = _OTHER`, with the name the caller used as
/// `rpc.method_original` (a current name, so not before v1.38).
pub(crate) fn other_method(
    attributes: &mut impl Attributes,
    raw: StringValue,
    conventions: Conventions,
) {
    attributes.add(attr::RPC_METHOD, OTHER);
    if conventions.current() {
        attributes.add(attr::RPC_METHOD_ORIGINAL, raw);
    }
}

fn http(
    attributes: &mut impl Attributes,
    info: &CallInfo<'_>,
    names: &CallNames,
    normalized: &'static str,
    side: Side,
) {
    attributes.add(attr::HTTP_REQUEST_METHOD, normalized);
    if normalized == OTHER {
        attributes.add(attr::HTTP_REQUEST_METHOD_ORIGINAL, info.method.to_owned());
    }
    if side.is_server() {
        if !names.service.is_empty() {
            attributes.add(attr::HTTP_ROUTE, names.service.clone());
        }
        let url = info.url.unwrap_or_default();
        attributes.add(
            attr::URL_SCHEME,
            match url.scheme {
                None | Some("http") => Cow::Borrowed("http"),
                Some("https") => Cow::Borrowed("https"),
                Some(other) => Cow::Owned(other.to_owned()),
            },
        );
        if !url.path.is_empty() {
            attributes.add(attr::URL_PATH, recent::text(url.path));
        }
        if let Some(query) = url.query {
            attributes.add(attr::URL_QUERY, query.to_owned());
        }
    } else if let Some(full) = info.url.as_ref().and_then(address::full_url) {
        attributes.add(attr::URL_FULL, full);
    }
}
