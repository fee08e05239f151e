//! Optional authentication of scrapes: a bearer token or HTTP basic auth.

use std::fmt;

use http::{header, HeaderMap, HeaderValue};

/// What a scrape must present. The expected credentials are kept only in
/// their encoded form and never printed by `Debug`.
#[derive(Clone, Default)]
pub(super) enum Auth {
    /// Anyone may scrape.
    #[default]
    None,
    /// `Authorization: Bearer <token>`; holds the token.
    Bearer(Vec<u8>),
    /// `Authorization: Basic <base64(user:password)>`; holds the user (for
    /// `Debug`) and the base64 credentials.
    Basic { user: String, encoded: Vec<u8> },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
            Self::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

impl Auth {
    pub(super) fn bearer(token: &str) -> Self {
        Self::Bearer(token.as_bytes().to_vec())
    }

    pub(super) fn basic(user: &str, password: &str) -> Self {
        Self::Basic {
            user: user.to_owned(),
            encoded: base64_encode(format!("{user}:{password}").as_bytes()).into_bytes(),
        }
    }

    /// Why these credentials cannot work, if they cannot.
    pub(super) fn validate(&self) -> Result<(), &'static str> {
        match self {
            Self::None => Ok(()),
            Self::Bearer(token) => {
                // Visible ASCII without spaces, so that a client can send it
                // in a header (RFC 6750 asks for even fewer characters).
                if token.is_empty() || !token.iter().all(u8::is_ascii_graphic) {
                    Err("the bearer token must be non-empty visible ASCII without spaces")
                } else {
                    Ok(())
                }
            }
            Self::Basic { user, .. } if user.contains(':') => {
                Err("the basic auth user must not contain ':' (RFC 7617)")
            }
            Self::Basic { .. } => Ok(()),
        }
    }

    /// Whether the request's `Authorization` headers carry the credentials.
    pub(super) fn allows(&self, headers: &HeaderMap) -> bool {
        let (scheme, expected) = match self {
            Self::None => return true,
            Self::Bearer(token) => ("bearer", token),
            Self::Basic { encoded, .. } => ("basic", encoded),
        };
        let mut allowed = false;
        // At most a few headers are looked at: hyper bounds their count.
        for value in headers.get_all(header::AUTHORIZATION) {
            let value = value.as_bytes();
            let Some(space) = value.iter().position(|b| *b == b' ') else {
                continue;
            };
            let (given_scheme, rest) = value.split_at(space);
            // The scheme is case-insensitive (RFC 9110 11.1) and not secret.
            if !given_scheme.eq_ignore_ascii_case(scheme.as_bytes()) {
                continue;
            }
            let credentials = trim_spaces(rest);
            // No early exit, so that timing does not tell which header matched.
            allowed |= constant_time_eq(expected, credentials);
        }
        allowed
    }

    /// The `WWW-Authenticate` challenge of a 401 answer.
    pub(super) fn challenge(&self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Basic { .. } => "Basic realm=\"metrics\", charset=\"UTF-8\"",
            _ => "Bearer realm=\"metrics\"",
        })
    }
}

fn trim_spaces(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Compares in time that depends only on `expected.len()`, not on where
/// `given` differs or on how long it is.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

/// Standard base64 with padding (RFC 4648 section 4), as HTTP clients encode
/// basic credentials.
fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn bearer_checks_scheme_and_token() {
        let auth = Auth::bearer("s3cret");
        assert!(auth.allows(&headers(&["Bearer s3cret"])));
        assert!(auth.allows(&headers(&["bearer  s3cret "])));
        assert!(auth.allows(&headers(&["Basic x", "Bearer s3cret"])));
        assert!(!auth.allows(&headers(&[])));
        assert!(!auth.allows(&headers(&["Bearer s3cre"])));
        assert!(!auth.allows(&headers(&["Bearer s3cret2"])));
        assert!(!auth.allows(&headers(&["Bearer"])));
        assert!(!auth.allows(&headers(&["Basic s3cret"])));
        assert!(!auth.allows(&headers(&["s3cret"])));
    }

    #[test]
    fn basic_checks_encoded_credentials() {
        let auth = Auth::basic("Aladdin", "open sesame");
        assert!(auth.allows(&headers(&["Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="])));
        assert!(!auth.allows(&headers(&["Basic QWxhZGRpbjpvcGVuIHNlc2FtZR=="])));
        assert!(!auth.allows(&headers(&["Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ=="])));
        assert!(Auth::basic("a:b", "c").validate().is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let text = format!(
            "{:?} {:?}",
            Auth::bearer("s3cret"),
            Auth::basic("u", "pw-s3cret")
        );
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn bearer_token_must_be_sendable() {
        assert!(Auth::bearer("").validate().is_err());
        assert!(Auth::bearer("a b").validate().is_err());
        assert!(Auth::bearer("a\nb").validate().is_err());
        assert!(Auth::bearer("é").validate().is_err());
        assert!(Auth::bearer("abc-._~+/=").validate().is_ok());
    }
}
