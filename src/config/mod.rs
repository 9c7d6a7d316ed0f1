//! What the operator's files say: space files and zone files, loaded and checked.
//!
//! Two stages, as in ripgrep's flags: [`load`] reads the files into their serde [`model`] (every
//! syntax error with its position), and [`validate`] checks them as a whole and builds the typed
//! [`Config`] that `snapshot::compile` consumes. Every problem is a [`Diagnostic`] with
//! `path:line:column`, and one run reports all of them. No sockets, no tokio, no logging.
//! Certificates are checked here with `rustls-pki-types` (PEM parsing only, no crypto), so a
//! bad certificate file is a `file:line` error like any other.

pub mod load;
pub mod model;
pub mod validate;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use hickory_proto::rr::{Name, RecordSet, RrKey};
use ipnet::IpNet;

pub use model::{Audience, Policy};

/// A problem in an operator's file, with the place it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Loads and validates every space file in `dir`: the whole of what `check` and `serve` read.
pub fn load_dir(dir: &Path) -> Result<Config, Vec<Diagnostic>> {
    let (sources, diagnostics) = load::load_sources(dir);
    checked(sources, diagnostics)
}

/// Parses and validates in-memory files: (path, YAML) space files and the (path, text) zone and
/// certificate files they name. Tests, fuzz targets and benches build configs this way.
pub fn parse_texts(
    files: &[(&str, &str)],
    others: &[(&str, &str)],
) -> Result<Config, Vec<Diagnostic>> {
    let (sources, diagnostics) = load::parse_sources(files, others);
    checked(sources, diagnostics)
}

fn checked(
    sources: Vec<load::Source>,
    mut diagnostics: Vec<Diagnostic>,
) -> Result<Config, Vec<Diagnostic>> {
    match validate::validate(sources) {
        Ok(config) if diagnostics.is_empty() => Ok(config),
        Ok(_) => Err(diagnostics),
        Err(more) => {
            diagnostics.extend(more);
            Err(diagnostics)
        }
    }
}

/// The checked configuration: every space, sorted by name, with typed values.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The spaces, sorted by name.
    pub spaces: Vec<Space>,
}

impl Config {
    /// "2 spaces, 5 apps, 9 names": what the config holds, for `check` and the startup log.
    pub fn summary(&self) -> String {
        let spaces = self.spaces.len();
        let apps: usize = self.spaces.iter().map(|s| s.apps.len()).sum();
        let names: usize = self.spaces.iter().map(Space::names_served).sum();
        format!("{spaces} spaces, {apps} apps, {names} names")
    }
}

/// A checked space.
#[derive(Debug, Clone)]
pub struct Space {
    /// The space's name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// The shared app domain, lower-case and fully qualified.
    pub domain: Name,
    /// The space's own network.
    pub network: IpNet,
    /// Trusted networks outside the space.
    pub peers: Vec<Peer>,
    /// Internal router endpoints.
    pub router_private: Vec<IpAddr>,
    /// Public router endpoints.
    pub router_public: Vec<IpAddr>,
    /// TTL of synthesized records.
    pub ttl: u32,
    /// Name servers; never empty (a default is filled in).
    pub nameservers: Vec<Nameserver>,
    /// Public name servers (possibly none).
    pub public_nameservers: Vec<Nameserver>,
    /// The RNAME of public SOAs, if set.
    pub public_hostmaster: Option<Name>,
    /// The serial the file declares for its synthesized zones (`serial`), if any.
    pub serial: Option<u32>,
    /// The serial the file declares for what public askers see (`public.serial`, else
    /// `serial`), if any.
    pub public_serial: Option<u32>,
    /// What trusted askers get for unlisted names under `domain`.
    pub unlisted: Policy,
    /// Where `forward` relays to.
    pub upstreams: Vec<SocketAddr>,
    /// Parsed zone files.
    pub zones: Vec<Zone>,
    /// The apps.
    pub apps: Vec<App>,
    /// The secondaries that replicate its views.
    pub secondaries: Vec<Secondary>,
}

impl Space {
    /// How many names the space serves: app names, custom domains, zone-file owners.
    pub fn names_served(&self) -> usize {
        let app_names: usize = self.apps.iter().map(|a| 1 + a.domains.len()).sum();
        let zone_names: usize = (self.zones.iter())
            .map(|z| {
                let owners: std::collections::HashSet<_> =
                    z.records.keys().map(|k| &k.name).collect();
                owners.len()
            })
            .sum();
        app_names + zone_names
    }
}

/// A checked secondary server.
#[derive(Debug, Clone, Hash)]
pub struct Secondary {
    /// Its name, for logs.
    pub name: String,
    /// The addresses its transfer requests may come from.
    pub sources: Vec<IpAddr>,
    /// Where NOTIFY goes.
    pub notify: Vec<SocketAddr>,
    /// The key that signs its requests.
    pub key: TsigKey,
    /// The view it replicates.
    pub audience: XfrAudience,
}

/// Whose view of the space's zones a secondary replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XfrAudience {
    /// What the space's own network sees.
    Space,
    /// What the space's peer at this index sees.
    Peer(usize),
    /// What askers that no space trusts see.
    Public,
}

impl fmt::Display for XfrAudience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XfrAudience::Space => f.write_str("space"),
            XfrAudience::Peer(i) => write!(f, "peer #{}", i + 1),
            XfrAudience::Public => f.write_str("public"),
        }
    }
}

/// A TSIG key (RFC 8945). Its `Debug` form leaves the secret out, so it is never logged.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TsigKey {
    /// The key's name, lower-case.
    pub name: Name,
    /// The MAC algorithm.
    pub algorithm: TsigAlgorithm,
    /// The secret.
    pub secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The TSIG algorithms we sign and verify with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TsigAlgorithm {
    /// `hmac-sha256`, which every secondary supports.
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

impl TsigAlgorithm {
    /// The algorithm by its name in a config or on the wire (`hmac-sha256` or `hmac-sha256.`).
    pub fn from_name(name: &str) -> Option<TsigAlgorithm> {
        match name.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
            "hmac-sha384" => Some(TsigAlgorithm::HmacSha384),
            "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
            _ => None,
        }
    }

    /// Its name, as the TSIG record carries it (without the final dot).
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

/// A checked peer.
#[derive(Debug, Clone, Hash)]
pub struct Peer {
    /// The peer's name.
    pub name: String,
    /// Its networks.
    pub cidrs: Vec<IpNet>,
}

/// A checked name server.
#[derive(Debug, Clone, Hash)]
pub struct Nameserver {
    /// Host name, lower-case and fully qualified.
    pub name: Name,
    /// Glue address.
    pub ip: Option<IpAddr>,
}

/// A parsed zone file.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The zone file.
    pub file: PathBuf,
    /// The apex: the owner of the SOA, lower-case.
    pub apex: Name,
    /// Who sees it.
    pub audience: Audience,
    /// Its records, as hickory's zone parser returns them.
    pub records: BTreeMap<RrKey, RecordSet>,
}

/// A checked app.
#[derive(Debug, Clone, Hash)]
pub struct App {
    /// The app's name.
    pub name: String,
    /// `true` for an internal app, `false` for a standard (public) one.
    pub internal_routing: bool,
    /// Indexes into the space's `peers` allowed to see the app; `None` means every peer.
    pub allow: Option<Vec<usize>>,
    /// Custom domains, lower-case and fully qualified; wildcards keep their `*` label.
    pub domains: Vec<Name>,
    /// The certificate pair for the router.
    pub tls: Option<Tls>,
    /// The dynos.
    pub dynos: Vec<Dyno>,
}

/// A certificate pair, read from its files.
#[derive(Debug, Clone, Hash)]
pub struct Tls {
    /// Certificate path.
    pub cert: PathBuf,
    /// Key path.
    pub key: PathBuf,
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

/// A checked dyno.
#[derive(Debug, Clone, Hash)]
pub struct Dyno {
    /// Process type, e.g. `web`.
    pub process: String,
    /// Its number within the process type, e.g. `1`.
    pub index: u32,
    /// Private address.
    pub ip: IpAddr,
    /// Port, if it listens.
    pub port: Option<u16>,
}

impl Dyno {
    /// The dyno's name as written, e.g. `web.1`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.process, self.index)
    }
}

/// The name a custom domain covers: itself, or for `*.x` the name `x` below which it answers.
pub fn wildcard_base(domain: &Name) -> Name {
    if domain.is_wildcard() {
        domain.base_name()
    } else {
        domain.clone()
    }
}
