//! TLS for the router: the certificate for each connection, chosen from the current snapshot by
//! SNI and by who is asking.
//!
//! An app's own `tls` pair answers for its custom domains, but only to a client that may reach
//! the app (the DNS rules): a public client asking for an internal app's domain gets the default
//! certificate, so a certificate never reveals a hidden app. Everything else, `<app>.<domain>`
//! names included, gets the default pair from the command line. Because the choice reads the
//! snapshot per handshake, certificates change with a reload. ALPN offers HTTP/2 and HTTP/1.1.
//!
//! Each certificate gets one `ServerConfig`, made at its first handshake and kept while the
//! certificate lives (a reload that replaces it lets it go), so that a client can resume its
//! session on its next connection, by a stateless ticket. Configs share no ticket keys: a
//! session resumes only under the certificate this client at this name would get anyway.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::rr::Name;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::snapshot::Snapshot;

/// The router's TLS: the snapshot's app certificates and a default pair.
#[derive(Debug, Clone)]
pub struct Tls {
    snapshot: Arc<ArcSwap<Snapshot>>,
    default: Option<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
    configs: Arc<Mutex<Configs>>,
}

/// The config of each live certificate, by the certificate's address.
type Configs = HashMap<usize, (Weak<CertifiedKey>, Arc<ServerConfig>)>;

impl Tls {
    /// TLS over `snapshot`'s certificates, with `default` for every other name.
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, default: Option<Arc<CertifiedKey>>) -> Tls {
        Tls {
            snapshot,
            default,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            configs: Arc::default(),
        }
    }

    /// The certificate for a client at `peer` asking for server name `sni`.
    pub fn pick(&self, peer: IpAddr, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let app_key = sni.and_then(|sni| {
            let mut name = Name::from_ascii(sni).ok()?;
            name.set_fqdn(true);
            let name = name.to_lowercase();
            let snapshot = self.snapshot.load();
            let app = snapshot.route(peer, &name)?;
            // `<app>.<domain>` names use the default (wildcard) certificate.
            (!snapshot.spaces[app.space].domain.zone_of(&name)).then_some(())?;
            snapshot.app(app).tls.clone()
        });
        app_key.or_else(|| self.default.clone())
    }

    /// Completes the handshake of a client at `peer` within `timeout`.
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: IpAddr,
        timeout: Duration,
    ) -> io::Result<TlsStream<TcpStream>> {
        let handshake = async {
            let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
            let key = self
                .pick(peer, start.client_hello().server_name())
                .ok_or_else(|| io::Error::other("no certificate for this server name"))?;
            // `key` lives until the handshake is done: the config holds it only weakly.
            start.into_stream(self.config(&key)?).await
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| io::ErrorKind::TimedOut)?
    }

    /// The config serving `key`: the one made before while `key` lives, else a new one.
    fn config(&self, key: &Arc<CertifiedKey>) -> io::Result<Arc<ServerConfig>> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        let at = Arc::as_ptr(key) as usize;
        if let Some((made_for, config)) = configs.get(&at)
            && made_for.upgrade().is_some_and(|k| Arc::ptr_eq(&k, key))
        {
            return Ok(config.clone());
        }
        // Certificates a reload replaced go with their configs.
        configs.retain(|_, (made_for, _)| made_for.strong_count() > 0);
        let weak = Arc::downgrade(key);
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(weak.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Stateless tickets: no server-side store to search or to fill.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(io::Error::other)?;
        let config = Arc::new(config);
        configs.insert(at, (weak, config.clone()));
        Ok(config)
    }
}

/// A resolver that always answers the certificate already chosen for this connection. It holds
/// the certificate weakly, so that a kept config does not keep a replaced certificate alive;
/// `accept` holds it for the handshake.
#[derive(Debug)]
struct Fixed(Weak<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.upgrade()
    }
}
