//! Where services and instances live in the ZooKeeper tree, and which names
//! ZooKeeper accepts there.

use std::net::SocketAddr;

use crate::Error;

/// Characters ZooKeeper refuses in a path (its `PathUtils.validatePath`,
/// applied to Java's UTF-16: a character beyond U+FFFF is a surrogate pair,
/// refused too).
fn refused(c: char) -> bool {
    matches!(u32::from(c), 0..=0x1f | 0x7f..=0x9f | 0xd800..=0xf8ff | 0xfff0..)
}

/// Why `segment` cannot be one node name of a path, if it cannot.
fn segment_problem(segment: &str) -> Option<&'static str> {
    if segment.is_empty() {
        Some("it is empty")
    } else if segment.contains('/') {
        Some("it contains '/'")
    } else if segment == "." || segment == ".." {
        Some("'.' and '..' are not node names")
    } else if segment.chars().any(refused) {
        Some("it contains a character ZooKeeper refuses in paths")
    } else {
        None
    }
}

/// A service name that can be one node under the prefix; refused with
/// [`Error::InvalidInstance`] otherwise, before any request.
pub(super) fn check_service(prefix: &str, service: &str) -> Result<(), Error> {
    let problem = segment_problem(service).or_else(|| {
        // `/zookeeper` is the server's own subtree.
        (prefix.is_empty() && service == "zookeeper").then_some("/zookeeper is reserved")
    });
    match problem {
        Some(problem) => Err(Error::InvalidInstance(format!(
            "service name {service:?} cannot be stored in ZooKeeper: {problem}"
        ))),
        None => Ok(()),
    }
}

/// `prefix` as an absolute path without a trailing `/` (the root is the
/// empty string, so that `format!("{prefix}/{service}")` is a path).
pub(super) fn normalize_prefix(prefix: &str) -> Result<String, Error> {
    let invalid = |problem: &str| {
        Error::Config(format!(
            "ZooKeeper prefix {prefix:?} is not an absolute path: {problem}"
        ))
    };
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        return if prefix.starts_with('/') {
            Ok(String::new())
        } else {
            Err(invalid("it is empty"))
        };
    }
    let Some(relative) = trimmed.strip_prefix('/') else {
        return Err(invalid("it does not start with '/'"));
    };
    if let Some(problem) = relative.split('/').find_map(segment_problem) {
        return Err(invalid(problem));
    }
    if relative == "zookeeper" || relative.starts_with("zookeeper/") {
        return Err(invalid("/zookeeper is reserved"));
    }
    Ok(trimmed.to_owned())
}

/// `<prefix>/<service>`: the parent of every instance node of `service`.
pub(super) fn service_path(prefix: &str, service: &str) -> String {
    format!("{prefix}/{service}")
}

/// `<prefix>/<service>/<ip>:<port>`.
pub(super) fn instance_path(prefix: &str, service: &str, address: SocketAddr) -> String {
    format!("{prefix}/{service}/{address}")
}

/// The node name of `path` if it is a child of `parent`, not deeper.
pub(super) fn child_name<'a>(parent: &str, path: &'a str) -> Option<&'a str> {
    let name = path.strip_prefix(parent)?.strip_prefix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalized_or_refused() {
        assert_eq!(normalize_prefix("/registry-ext").unwrap(), "/registry-ext");
        assert_eq!(normalize_prefix("/a/b/").unwrap(), "/a/b");
        assert_eq!(normalize_prefix("/").unwrap(), "");
        for refused in [
            "",
            "a",
            "/a//b",
            "/a/./b",
            "/zookeeper",
            "/zookeeper/x",
            "/a\u{0}",
        ] {
            assert!(
                matches!(normalize_prefix(refused), Err(Error::Config(_))),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn service_names_are_single_valid_nodes() {
        for good in ["echo", "payments-api", "a.b", "zookeeper", "名前"] {
            assert!(check_service("/registry-ext", good).is_ok(), "{good:?}");
        }
        for bad in ["", "a/b", ".", "..", "tab\there", "\u{1F600}", "\u{fff0}"] {
            assert!(
                matches!(
                    check_service("/registry-ext", bad),
                    Err(Error::InvalidInstance(_))
                ),
                "{bad:?}"
            );
        }
        assert!(check_service("", "zookeeper").is_err());
    }

    #[test]
    fn only_direct_children_are_instances() {
        let parent = "/registry-ext/echo";
        assert_eq!(
            child_name(parent, "/registry-ext/echo/10.0.0.7:80"),
            Some("10.0.0.7:80")
        );
        assert_eq!(child_name(parent, "/registry-ext/echo"), None);
        assert_eq!(child_name(parent, "/registry-ext/echo/a/b"), None);
        assert_eq!(child_name(parent, "/registry-ext/echoes/x"), None);
        assert_eq!(
            instance_path("", "echo", "[::1]:80".parse().unwrap()),
            "/echo/[::1]:80"
        );
    }
}
