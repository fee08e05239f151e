//! Mesh mode: whether a service-mesh sidecar (Istio's Envoy, or another
//! proxy in front of every call) does the discovery and load balancing, so
//! that the suite's registries step aside while its telemetry keeps working.
//!
//! The rule, in order:
//!
//! 1. A builder option ([`MeshMode::On`] / [`MeshMode::Off`]) wins.
//! 2. Else the environment variable [`MESH_ENV`] (`RPC_EXT_MESH`): `on`,
//!    `true` or `1` turn mesh mode on; `off`, `false` or `0` turn it off;
//!    `auto` (or unset, or empty) detects.
//! 3. Detection: mesh mode is on when the pod's annotations, as the
//!    Kubernetes Downward API writes them to a file, hold Istio's
//!    `sidecar.istio.io/status` (written by Istio's sidecar injector, on
//!    the pod only when a sidecar was injected). The file is
//!    [`POD_ANNOTATIONS_ENV`] (`RPC_EXT_POD_ANNOTATIONS`) or
//!    [`DEFAULT_POD_ANNOTATIONS`] (`/etc/podinfo/annotations`), which the
//!    Deployment mounts:
//!
//!    ```yaml
//!    volumes:
//!      - name: podinfo
//!        downwardAPI:
//!          items:
//!            - path: annotations
//!              fieldRef: { fieldPath: metadata.annotations }
//!    # and in the container: volumeMounts: [{ name: podinfo, mountPath: /etc/podinfo }]
//!    ```
//!
//!    Nothing else is probed: no port of the sidecar, no network request,
//!    so a process outside a mesh (no such file) is never taken for one.
//!    Without the file, detection says off.
//!
//! Each builder that has a mesh mode (rpc-ext-registry's `MeshAware`,
//! rpc-ext-tracing's `RpcTracingBuilder`, which then forwards
//! `x-request-id`) applies this rule on its own, when it is built; there
//! is no process-wide decision. With [`MESH_ENV`] or detection deciding,
//! both read the same environment and file and so agree. An explicit
//! option is different: `MeshMode::On` given to one builder does not set
//! the other, which still follows the variable and detection. To switch a
//! process by configuration, set [`MESH_ENV`] (or pass the same
//! [`MeshMode`] to every builder).
//!
//! ```
//! use rpc_ext_core::mesh::{Mesh, MeshMode};
//!
//! // An explicit choice needs no environment.
//! let mesh = Mesh::resolve(MeshMode::On);
//! assert!(mesh.enabled);
//! assert_eq!(mesh.reason, "set by option");
//! ```

use std::path::Path;

/// Environment variable choosing mesh mode: `on`, `off` or `auto`.
pub const MESH_ENV: &str = "RPC_EXT_MESH";

/// Environment variable naming the Downward API file of the pod's
/// annotations that detection reads.
pub const POD_ANNOTATIONS_ENV: &str = "RPC_EXT_POD_ANNOTATIONS";

/// Where detection reads the pod's annotations when
/// [`POD_ANNOTATIONS_ENV`] is unset.
pub const DEFAULT_POD_ANNOTATIONS: &str = "/etc/podinfo/annotations";

/// The annotation Istio's sidecar injector writes on every pod it injects.
pub const ISTIO_SIDECAR_ANNOTATION: &str = "sidecar.istio.io/status";

/// How mesh mode is chosen: set, or detected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MeshMode {
    /// The environment variable decides, else detection (the default).
    #[default]
    Auto,
    /// Mesh mode, whatever the environment says.
    On,
    /// No mesh mode, whatever the environment says.
    Off,
}

/// The decision: whether mesh mode is on, and why (for the log line that
/// announces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mesh {
    /// Whether a mesh sidecar discovers and balances.
    pub enabled: bool,
    /// Which rule decided: `"set by option"`, `"RPC_EXT_MESH"`, `"Istio
    /// sidecar annotation"`, `"no mesh detected"`.
    pub reason: &'static str,
}

impl Mesh {
    /// Applies the rule of this module to `mode`, reading the process
    /// environment and the annotations file when `mode` is
    /// [`MeshMode::Auto`].
    pub fn resolve(mode: MeshMode) -> Self {
        Self::resolve_with(mode, |name| std::env::var(name).ok())
    }

    /// [`resolve`](Self::resolve) with the environment read through `env`
    /// (for tests, and for callers with a configuration of their own).
    pub fn resolve_with(mode: MeshMode, env: impl Fn(&str) -> Option<String>) -> Self {
        match mode {
            MeshMode::On => return Self::set(true, "set by option"),
            MeshMode::Off => return Self::set(false, "set by option"),
            MeshMode::Auto => {}
        }
        match env(MESH_ENV).as_deref().map(str::trim) {
            Some(v)
                if ["on", "true", "1"]
                    .iter()
                    .any(|x| v.eq_ignore_ascii_case(x)) =>
            {
                return Self::set(true, MESH_ENV)
            }
            Some(v)
                if ["off", "false", "0"]
                    .iter()
                    .any(|x| v.eq_ignore_ascii_case(x)) =>
            {
                return Self::set(false, MESH_ENV)
            }
            Some(v) if !v.is_empty() && !v.eq_ignore_ascii_case("auto") => {
                tracing::warn!(
                    value = v,
                    "{MESH_ENV} is neither on, off nor auto; detecting the mesh"
                );
            }
            _ => {}
        }
        let file = env(POD_ANNOTATIONS_ENV)
            .filter(|path| !path.is_empty())
            .unwrap_or_else(|| DEFAULT_POD_ANNOTATIONS.to_owned());
        if istio_injected(Path::new(&file)) {
            Self::set(true, "Istio sidecar annotation")
        } else {
            Self::set(false, "no mesh detected")
        }
    }

    fn set(enabled: bool, reason: &'static str) -> Self {
        Self { enabled, reason }
    }
}

/// Whether the Downward API annotations file at `path` holds Istio's
/// sidecar annotation. The file has one `key="value"` line per annotation;
/// an unreadable or missing file means no.
fn istio_injected(path: &Path) -> bool {
    // Annotations total at most 256 KiB (the API server's limit); a larger
    // file is not the Downward API's and is not read.
    const MAX: u64 = 256 * 1024;
    read_small_file(path, MAX).is_some_and(|text| {
        text.lines().any(|line| {
            line.split_once('=')
                .is_some_and(|(key, _)| key.trim() == ISTIO_SIDECAR_ANNOTATION)
        })
    })
}

/// The text of the regular file at `path` if it holds at most `max` bytes
/// of UTF-8, else `None` (missing, unreadable, not a regular file, larger).
/// For the small files Kubernetes mounts into a pod (the Downward API's
/// annotations, the service account's namespace), which the mesh rule
/// reads: the path is checked to be a regular file before it is opened (a
/// FIFO would block the open), and at most `max + 1` bytes are read, so a
/// file that grows meanwhile is refused, never read whole.
///
/// ```
/// use rpc_ext_core::mesh::read_small_file;
///
/// assert_eq!(read_small_file("/nonexistent".as_ref(), 64), None);
/// ```
pub fn read_small_file(path: &Path, max: u64) -> Option<String> {
    use std::io::Read;

    if !std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= max) {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(max.saturating_add(1))
        .read_to_string(&mut text)
        .ok()?;
    (text.len() as u64 <= max).then_some(text)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn annotations(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    /// A file removed on drop, without a dev-dependency.
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);

        impl TempFile {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "rpc-ext-mesh-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }

            pub fn path(&self) -> &str {
                self.0.to_str().unwrap()
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn small_files_are_read_whole_and_larger_ones_not_at_all() {
        let file = annotations("default\n");
        let path = std::path::Path::new(file.path());
        assert_eq!(read_small_file(path, 8).as_deref(), Some("default\n"));
        assert_eq!(read_small_file(path, 7), None);
        assert_eq!(read_small_file(&std::env::temp_dir(), 1 << 20), None);
    }

    #[test]
    fn an_option_wins_over_the_environment() {
        let env = with(&[(MESH_ENV, "off")]);
        assert!(Mesh::resolve_with(MeshMode::On, &env).enabled);
        let env = with(&[(MESH_ENV, "on")]);
        assert!(!Mesh::resolve_with(MeshMode::Off, &env).enabled);
    }

    #[test]
    fn the_variable_wins_over_detection() {
        let injected = annotations("sidecar.istio.io/status=\"{}\"\n");
        for (value, enabled) in [
            ("on", true),
            ("TRUE", true),
            ("1", true),
            ("off", false),
            ("0", false),
        ] {
            let env = with(&[(MESH_ENV, value), (POD_ANNOTATIONS_ENV, injected.path())]);
            let mesh = Mesh::resolve_with(MeshMode::Auto, &env);
            assert_eq!((mesh.enabled, mesh.reason), (enabled, MESH_ENV), "{value}");
        }
    }

    #[test]
    fn detection_needs_istios_annotation_in_the_downward_api_file() {
        let injected = annotations(
            "kubectl.kubernetes.io/restartedAt=\"2026-01-01\"\nsidecar.istio.io/status=\"{\\\"initContainers\\\":[\\\"istio-init\\\"]}\"\n",
        );
        let other =
            annotations("sidecar.istio.io/inject=\"true\"\nprometheus.io/scrape=\"true\"\n");
        for (auto, file, enabled) in [
            ("auto", injected.path(), true),
            ("", injected.path(), true),
            ("auto", other.path(), false),
            ("auto", "/nonexistent/annotations", false),
        ] {
            let env = with(&[(MESH_ENV, auto), (POD_ANNOTATIONS_ENV, file)]);
            assert_eq!(
                Mesh::resolve_with(MeshMode::Auto, &env).enabled,
                enabled,
                "{file}"
            );
        }
        // Unset everything: the default path, absent on a test machine.
        assert!(!Mesh::resolve_with(MeshMode::Auto, with(&[])).enabled);
    }
}
