//! TLS to the collector from the `OTEL_EXPORTER_OTLP_*CERTIFICATE` and
//! `_CLIENT_KEY` files (feature `tls`, rustls with aws-lc-rs for both
//! transports, so one crypto provider is compiled in).
//!
//! As the specification says, `CERTIFICATE` is *the* trust anchor for the
//! collector: when it is set, the system roots are not consulted.

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};

use super::{
    env::{read_pem, TlsFiles},
    Error,
};

/// The tonic TLS settings for OTLP/gRPC.
pub(super) fn grpc_config(files: &TlsFiles) -> Result<ClientTlsConfig, Error> {
    let mut config = ClientTlsConfig::new();
    config = match &files.certificate {
        Some(path) => config.ca_certificate(Certificate::from_pem(read_pem(path)?)),
        None => config.with_native_roots(),
    };
    if let Some((certificate, key)) = &files.client {
        config = config.identity(Identity::from_pem(read_pem(certificate)?, read_pem(key)?));
    }
    Ok(config)
}

/// Adds the trust anchor and client identity to the OTLP/HTTP client.
pub(super) fn http_client(
    mut builder: reqwest::ClientBuilder,
    files: &TlsFiles,
) -> Result<reqwest::ClientBuilder, Error> {
    let tls = |error: reqwest::Error| Error::Tls(error.to_string());
    if let Some(path) = &files.certificate {
        let roots = reqwest::Certificate::from_pem_bundle(&read_pem(path)?).map_err(tls)?;
        builder = builder.tls_certs_only(roots);
    }
    if let Some((certificate, key)) = &files.client {
        let mut pem = read_pem(certificate)?;
        pem.push(b'\n');
        pem.extend(read_pem(key)?);
        builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(tls)?);
    }
    Ok(builder)
}
