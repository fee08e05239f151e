//! What the junk test sends and what it allows: a service answering any
//! status, the junk requests of every kind, and the finite label values
//! every series must keep to whatever the clients sent.

use std::collections::BTreeSet;

use rpc_ext_core::GrpcCode;
use tower::Service;

/// A second service on the junk test's server that answers whatever status
/// the request asks for (`x-answer-grpc-status`, any raw value, or
/// `x-answer-http-status`): the statuses a handler, or a layer in front of
/// it, can give. Its one method is `test.Answer/Status`; like a generated
/// server, it never answers OK for a method it lacks.
#[derive(Clone)]
pub struct Answer;

/// The one method [`Answer`] has.
pub const ANSWER_METHOD: &str = "test.Answer/Status";

impl tonic::server::NamedService for Answer {
    const NAME: &'static str = "test.Answer";
}

impl Service<http::Request<tonic::body::Body>> for Answer {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let header = |name: &str| request.headers().get(name).cloned();
        let mut response = http::Response::new(tonic::body::Body::empty());
        if let Some(mut status) = header("x-answer-grpc-status") {
            let ok = status
                .to_str()
                .is_ok_and(|v| v.trim().parse::<i32>() == Ok(0));
            if ok && request.uri().path() != format!("/{ANSWER_METHOD}") {
                status = http::HeaderValue::from_static("12");
            }
            let headers = response.headers_mut();
            headers.insert(
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", status);
        } else {
            *response.status_mut() = header("x-answer-http-status")
                .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                .and_then(|code| http::StatusCode::from_u16(code).ok())
                .unwrap_or(http::StatusCode::NOT_FOUND);
        }
        std::future::ready(Ok(response))
    }
}

/// Junk gRPC requests (to unknown paths) and junk HTTP requests.
pub const JUNK_GRPC: u64 = 5_000;
pub const JUNK_HTTP: u64 = 5_000;

/// Non-standard HTTP verbs (recorded as `_OTHER`) next to the standard ones
/// (CONNECT is left out: HTTP/2 gives it another meaning, without a path).
const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "QUERY", "PURGE", "get",
    "M-SEARCH", "BREW", "X-ZQJUNK", "PROPFIND",
];
/// The methods of junk gRPC requests.
const GRPC_METHODS: &[&str] = &["POST", "POST", "GET", "PURGE", "X-ZQJUNK"];

/// `grpc-status` values of failed calls: every code but OK, then values
/// that are not codes (which read as UNKNOWN, or as the number they hold).
fn failed_grpc_statuses() -> Vec<String> {
    let invalid = [
        "17",
        "99",
        "-1",
        "abc",
        "",
        "1.5",
        "0x1",
        "2147483648",
        "+5",
        " 3",
    ];
    (1..=16)
        .map(|code: u8| code.to_string())
        .chain(invalid.map(str::to_owned))
        .collect()
}

/// One status of every class, and two outside the 100–599 range.
pub const HTTP_STATUSES: &[u16] = &[
    103, 200, 201, 204, 301, 302, 304, 400, 404, 418, 451, 500, 503, 599, 600, 999,
];

/// Content types that still say gRPC, and others.
const GRPC_CONTENT_TYPES: &[&[u8]] = &[
    b"application/grpc",
    b"application/grpc+proto",
    b"application/grpc+zqjunk",
    b"application/grpczqjunk",
    b"application/grpc; charset=zqjunk",
    b"application/grpc\xff\xfe",
];
const HTTP_CONTENT_TYPES: &[&[u8]] = &[
    b"text/plain",
    b"application/json",
    b"application/grp",
    b"zqjunk/zqjunk",
    b"",
    b"\xff\xfe/\x80",
];

/// `:scheme` and `:authority` values, set through a channel's origin.
pub const ORIGINS: &[&str] = &[
    "http://zqjunk-authority.example",
    "http://127.0.0.1:1",
    "http://user@zqjunk-userinfo.example:8080",
    "http://[::1]:9",
    "http://zqjunk~!$&'()*+,;=.example:65535",
    "https://zqjunk-secure.example",
    "zqjunk://zqjunk-scheme.example",
];

/// `Host` headers, on every third request.
const HOSTS: &[&[u8]] = &[b"zqjunk-host.example", b"\xff\xfe", b"zqjunk:99999", b""];

/// A small deterministic generator (xorshift64), so every run sends the
/// same junk.
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T: ?Sized>(&mut self, from: &'a [&'a T]) -> &'a T {
        from[(self.next() % from.len() as u64) as usize]
    }

    /// A token found nowhere by chance: `zq` and 12 hex digits.
    fn token(&mut self) -> String {
        format!("zq{:012x}", self.next() & 0xffff_ffff_ffff)
    }

    /// A junk path of kind `kind % 10`: random names, very long ones,
    /// non-UTF-8 percent escapes, a missing service or method, extra
    /// segments, an unknown method of a real service (or of [`Answer`],
    /// which answers it with the status asked for).
    fn path(&mut self, kind: u64) -> String {
        let t = self.token();
        match kind % 10 {
            0 => format!("/{t}.Service/Method{t}"),
            1 => format!("/{}{t}.S/{}", "s".repeat(3_000), "m".repeat(3_000)),
            2 => format!("/%FF%FE{t}.Svc/%C0%AF%80{t}"),
            3 => format!("//Method{t}"),
            4 => format!("/{t}"),
            5 => format!("/{t}.Svc/"),
            6 => format!("/a/{t}/c"),
            7 => format!("/echo.Echo/Missing{t}"),
            8 => format!("/test.Answer/{t}"),
            _ => format!("/echo.Echo/Say%00{t}?q={t}"),
        }
    }
}

/// Every request the junk test sends, and what went into them.
pub struct Plan {
    /// The requests, each with the index of the origin to send it through.
    pub requests: Vec<(usize, http::Request<tonic::body::Body>)>,
    /// Every raw string the clients sent (paths and their segments,
    /// methods, content types, hosts, origins and their parts).
    pub sent: BTreeSet<String>,
    pub grpc_requests: u64,
    pub http_requests: u64,
    /// The HTTP statuses [`Answer`] is asked for.
    pub http_statuses: BTreeSet<u16>,
}

impl Plan {
    /// `test.Answer/Status` answering every `grpc-status` value (OK
    /// first), then the junk, spread over `origins` channels.
    pub fn new(origins: usize) -> anyhow::Result<Self> {
        let mut plan = Self {
            requests: Vec::new(),
            sent: BTreeSet::new(),
            grpc_requests: 0,
            http_requests: 0,
            http_statuses: BTreeSet::new(),
        };
        let failed = failed_grpc_statuses();
        for status in std::iter::once("0").chain(failed.iter().map(String::as_str)) {
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("/{ANSWER_METHOD}"))
                .header("content-type", "application/grpc")
                .header("x-answer-grpc-status", status)
                .body(tonic::body::Body::empty())?;
            plan.push(request, true, origins);
        }
        let failed: Vec<&str> = failed.iter().map(String::as_str).collect();
        let mut junk = Junk(0x9e37_79b9_7f4a_7c15);
        for i in 0..JUNK_GRPC + JUNK_HTTP {
            let grpc = i < JUNK_GRPC;
            let path = junk.path(i);
            let (method, content_type) = if grpc {
                (junk.pick(GRPC_METHODS), junk.pick(GRPC_CONTENT_TYPES))
            } else {
                (junk.pick(HTTP_METHODS), junk.pick(HTTP_CONTENT_TYPES))
            };
            let mut request = http::Request::builder()
                .method(method)
                .uri(path.as_str())
                .header("content-type", http::HeaderValue::from_bytes(content_type)?);
            if i % 3 == 0 {
                let host = junk.pick(HOSTS);
                request = request.header("host", http::HeaderValue::from_bytes(host)?);
                plan.sent.insert(String::from_utf8_lossy(host).into_owned());
            }
            request = if grpc {
                request.header("x-answer-grpc-status", junk.pick(&failed))
            } else {
                let status = HTTP_STATUSES[(junk.next() % HTTP_STATUSES.len() as u64) as usize];
                plan.http_statuses.insert(status);
                request.header("x-answer-http-status", status)
            };
            plan.sent
                .extend(path.split(['/', '?', '=', '.']).map(str::to_owned));
            plan.sent.insert(path);
            plan.sent.insert(method.to_owned());
            plan.sent
                .insert(String::from_utf8_lossy(content_type).into_owned());
            plan.push(request.body(tonic::body::Body::empty())?, grpc, origins);
        }
        for origin in ORIGINS {
            plan.sent.insert((*origin).to_owned());
            plan.sent
                .extend(origin.split(['/', ':', '@']).map(str::to_owned));
        }
        Ok(plan)
    }

    fn push(&mut self, request: http::Request<tonic::body::Body>, grpc: bool, origins: usize) {
        let origin = self.requests.len() % origins;
        self.requests.push((origin, request));
        if grpc {
            self.grpc_requests += 1;
        } else {
            self.http_requests += 1;
        }
    }
}

/// One series: its family and its labels but `le`, in the order scraped.
pub type Series = (String, Vec<(String, String)>);

/// The finite values of each label of the server families, whatever the
/// clients sent; a status and its `error_type` count as one value.
pub struct FiniteLabels {
    pub rpc_methods: Vec<&'static str>,
    pub http_methods: Vec<&'static str>,
    pub schemes: Vec<&'static str>,
    /// `(rpc_response_status_code, error_type)`.
    pub grpc_outcomes: Vec<(String, String)>,
    /// `(http_response_status_code, error_type)`.
    pub http_outcomes: Vec<(String, String)>,
}

impl FiniteLabels {
    /// The methods the server has (once called OK) and `_OTHER`; the HTTP
    /// methods of the conventions and `_OTHER`; the 17 gRPC codes, with
    /// the server's `error.type` for each (the conventions' server errors
    /// are UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
    /// UNAVAILABLE and DATA_LOSS); the HTTP statuses the server answered
    /// (`error.type` from 500 on), and for both kinds a call the caller
    /// abandoned or the handler failed outright.
    pub fn new(http_statuses: &BTreeSet<u16>) -> Self {
        let server_errors = [
            "UNKNOWN",
            "DEADLINE_EXCEEDED",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
        ];
        let pair = |status: &str, error: &str| (status.to_owned(), error.to_owned());
        // The 17 codes gRPC defines, by the names the layers label them with.
        let mut grpc_outcomes: Vec<_> = (0..=16)
            .map(|number| GrpcCode::new(number).name())
            .map(|code| {
                let error = if server_errors.contains(&code) {
                    code
                } else {
                    ""
                };
                pair(code, error)
            })
            .collect();
        grpc_outcomes.push(pair("CANCELLED", "CANCELLED"));
        grpc_outcomes.push(pair("", "transport"));
        // 200 is also tonic's answer to a path it does not route.
        let answered: BTreeSet<u16> = http_statuses.iter().copied().chain([200]).collect();
        let mut http_outcomes: Vec<_> = answered
            .iter()
            .map(|&code| {
                let label = if (100..600).contains(&code) {
                    code.to_string()
                } else {
                    "other".to_owned()
                };
                let error = if code >= 500 { label.as_str() } else { "" };
                pair(&label, error)
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        http_outcomes.push(pair("", "cancelled"));
        http_outcomes.push(pair("", "transport"));
        Self {
            rpc_methods: vec!["echo.Echo/Say", ANSWER_METHOD, "_OTHER"],
            http_methods: vec![
                "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                "QUERY", "_OTHER",
            ],
            schemes: vec!["http", "https"],
            grpc_outcomes,
            http_outcomes,
        }
    }

    /// The most series each server family can have: the product of the
    /// numbers of values of its labels.
    pub fn bounds(&self) -> [(&'static str, usize); 6] {
        let methods = self.rpc_methods.len();
        let http = self.http_methods.len() * self.schemes.len();
        [
            (
                "rpc_server_call_duration_seconds",
                methods * self.grpc_outcomes.len(),
            ),
            ("rpc_server_active_requests", methods),
            ("rpc_server_request_size_bytes", methods),
            ("rpc_server_response_size_bytes", methods),
            (
                "http_server_request_duration_seconds",
                http * self.http_outcomes.len(),
            ),
            ("http_server_active_requests", http),
        ]
    }

    /// Whether a series of `family` has exactly that family's labels, each
    /// with one of its finite values.
    pub fn allow(&self, family: &str, labels: &[(String, String)]) -> bool {
        let get = |name: &str| {
            labels
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let names: Vec<&str> = labels.iter().map(|(n, _)| n.as_str()).collect();
        let one_of = |name: &str, values: &[&str]| get(name).is_some_and(|v| values.contains(&v));
        let outcome = |status: &str, outcomes: &[(String, String)]| {
            get(status).zip(get("error_type")).is_some_and(|(s, e)| {
                outcomes
                    .iter()
                    .any(|(status, error)| status == s && error == e)
            })
        };
        let rpc = one_of("rpc_system_name", &["grpc"]) && one_of("rpc_method", &self.rpc_methods);
        let http = one_of("http_request_method", &self.http_methods)
            && one_of("url_scheme", &self.schemes);
        match family {
            "rpc_server_call_duration_seconds" => {
                names
                    == [
                        "error_type",
                        "rpc_method",
                        "rpc_response_status_code",
                        "rpc_system_name",
                    ]
                    && rpc
                    && outcome("rpc_response_status_code", &self.grpc_outcomes)
            }
            "rpc_server_active_requests"
            | "rpc_server_request_size_bytes"
            | "rpc_server_response_size_bytes" => names == ["rpc_method", "rpc_system_name"] && rpc,
            "http_server_request_duration_seconds" => {
                names
                    == [
                        "error_type",
                        "http_request_method",
                        "http_response_status_code",
                        "http_route",
                        "url_scheme",
                    ]
                    && http
                    && one_of("http_route", &["_OTHER"])
                    && outcome("http_response_status_code", &self.http_outcomes)
            }
            "http_server_active_requests" => names == ["http_request_method", "url_scheme"] && http,
            _ => false,
        }
    }

    /// The raw client string `value` contains, if any. Strings that are
    /// part of one of the finite values (`echo`, `http`) do not count: a
    /// client may well send them too.
    pub fn client_input_in<'a>(&self, value: &str, sent: &'a BTreeSet<String>) -> Option<&'a str> {
        let own: Vec<&str> = self
            .rpc_methods
            .iter()
            .chain(&self.http_methods)
            .chain(&self.schemes)
            .copied()
            .chain(["grpc"])
            .chain(
                self.grpc_outcomes
                    .iter()
                    .chain(&self.http_outcomes)
                    .flat_map(|(s, e)| [s.as_str(), e.as_str()]),
            )
            .collect();
        sent.iter().map(String::as_str).find(|raw| {
            raw.len() >= 4 && value.contains(raw) && !own.iter().any(|own| own.contains(raw))
        })
    }
}

/// Every series of a scrape (histogram buckets as one series).
pub fn series_of(text: &str) -> anyhow::Result<Vec<Series>> {
    let mut out = Vec::new();
    for (name, family) in super::exposition::parse(text)? {
        let mut seen = BTreeSet::new();
        for sample in family.samples {
            let labels: Vec<_> = sample
                .labels
                .into_iter()
                .filter(|(n, _)| n != "le")
                .collect();
            if seen.insert(labels.clone()) {
                out.push((name.clone(), labels));
            }
        }
    }
    Ok(out)
}
