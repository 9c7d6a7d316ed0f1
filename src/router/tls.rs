//! TLS for the router: a rustls certificate resolver that reads the current snapshot, so
//! certificates change with a reload and a new handshake picks the new one.
//!
//! SNI picks the certificate: an app's own `tls` pair for its custom domains, and the default
//! pair (from the command line) for everything else, `*.<domain>` app names included. ALPN
//! offers HTTP/2 and HTTP/1.1.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::rr::Name;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::snapshot::Snapshot;

/// Chooses a certificate for each handshake from the current snapshot.
#[derive(Debug)]
pub struct CertResolver {
    snapshot: Arc<ArcSwap<Snapshot>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertResolver {
    /// The certificate for server name `sni`: its app's, if it is a custom domain of an app
    /// with a certificate, else the default.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let app_key = sni.and_then(|sni| {
            let mut name = Name::from_ascii(sni).ok()?;
            name.set_fqdn(true);
            let name = name.to_lowercase();
            let snapshot = self.snapshot.load();
            let app = snapshot.host(&name)?;
            // `<app>.<domain>` names use the default (wildcard) certificate.
            (!snapshot.spaces[app.space].domain.zone_of(&name)).then_some(())?;
            snapshot.app(app).tls.clone()
        });
        app_key.or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// A TLS acceptor over `snapshot`'s certificates with `default` for other names.
pub fn acceptor(
    snapshot: Arc<ArcSwap<Snapshot>>,
    default: Option<Arc<CertifiedKey>>,
) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertResolver { snapshot, default }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
