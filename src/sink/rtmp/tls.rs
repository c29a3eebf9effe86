//! RTMPS: the rustls client configuration an RTMP sink wraps its TCP stream in.
//!
//! Roots are the system store read with rustls-native-certs, not the platform verifier reqwest
//! uses: an RTMP target often lives behind a private CA (an operator's own SRS or nginx), and
//! native-certs gives an explicit `RootCertStore` that the configured CA file and
//! `SSL_CERT_FILE` are simply added to. On Linux the platform verifier is itself native-certs
//! plus webpki, so nothing is lost. The crypto provider is aws-lc-rs, the one provider of the
//! whole tree, passed explicitly so nothing depends on a process-wide default being installed.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why an RTMPS client configuration could not be built; the sink reports it as a connect
/// failure instead of silently falling back to fewer roots.
#[derive(Debug, Error)]
pub enum TlsConfigError {
    /// The configured CA file (or `SSL_CERT_FILE`) could not be read.
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate rustls accepts as a root.
    #[error("CA file {path} holds no usable PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// No root at all: no system store, no CA file; every server would be refused.
    #[error("no trusted root certificates (system store empty and no CA file configured)")]
    NoRoots,
    /// rustls refused the protocol versions of the provider (should not happen).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the client configuration for RTMPS.
///
/// Roots: the system store, plus `SSL_CERT_FILE` when set (added to the system store rather
/// than replacing it, unlike OpenSSL), plus `ca_file`. With `insecure_skip_verify` the
/// server's certificate is not checked at all; the sink logs a warning on every connect.
pub fn client_config(
    ca_file: Option<&Path>,
    insecure_skip_verify: bool,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(root_store(ca_file)?)
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// System roots + `SSL_CERT_FILE` + `ca_file`.
fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    // With SSL_CERT_FILE set, native-certs reads only that file (the OpenSSL convention); the
    // system directories are then added explicitly so the variable extends the store.
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "skipping part of the system certificate store");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    let env_file = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    if env_file.is_some() {
        for dir in openssl_probe::candidate_cert_dirs() {
            let system = rustls_native_certs::load_certs_from_paths(None, Some(dir));
            roots.add_parsable_certificates(system.certs);
        }
    }
    tracing::debug!(system = added, total = roots.len(), "RTMPS roots loaded");
    for path in [env_file.as_deref(), ca_file].into_iter().flatten() {
        add_ca_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    Ok(roots)
}

/// Adds every certificate of a PEM file; a file with none is an error, because an operator
/// who names a CA file expects it to be used.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsConfigError> {
    let data = std::fs::read(path).map_err(|source| TlsConfigError::CaFile {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&data)
        .filter_map(Result::ok)
        .collect();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The TLS server name for `host`: a DNS name for SNI and name checks, or an IP address
/// (checked against the certificate's IP SANs; no SNI is sent for addresses).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("invalid TLS server name: {e}"))
}

/// Accepts any certificate while still checking the handshake signatures, so that the session
/// is at least bound to the key the server presented. Only built on explicit request.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_a_clear_error() {
        let e = client_config(Some(Path::new("/nonexistent/ca.pem")), false).expect_err("missing");
        assert!(matches!(e, TlsConfigError::CaFile { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("dockcast-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let e = client_config(Some(&path), false).expect_err("empty");
        assert!(matches!(e, TlsConfigError::NoCertificate { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn insecure_config_builds_without_roots() {
        assert!(client_config(None, true).is_ok());
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("push.example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name!").is_err());
    }
}
