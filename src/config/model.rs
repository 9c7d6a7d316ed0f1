//! The serde types that mirror a space file, field for field.
//!
//! No logic lives here: `load` fills these from YAML, `validate` checks them and turns them into
//! the typed [`crate::config::Config`]. Every key an operator may write is a field below, and an
//! unknown key is an error (`deny_unknown_fields`).

use serde::Deserialize;

/// One YAML space file: a private space, its trusted networks, its apps and zone files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceFile {
    /// The space's name, `[a-z0-9-]+`, unique across files.
    pub space: String,
    /// The shared app domain; `herokuapp.com` when absent.
    pub domain: Option<String>,
    /// The space's own CIDR (IPv4 or IPv6).
    pub network: String,
    /// The SOA serial of the zones synthesized from this file, as the tooling that writes the
    /// file stamps it (a date or a Unix time): replicas of the same file then agree on it.
    /// When absent, each process takes serials from its clock.
    pub serial: Option<u32>,
    /// Trusted networks outside the space: peered VPCs, VPN-connected offices.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// The router endpoints that app names resolve to.
    #[serde(default)]
    pub router: Router,
    /// Default TTL of synthesized records, in seconds; 60 when absent.
    pub ttl: Option<u32>,
    /// NS (and glue) of the zones this space sees; the first is the SOA MNAME.
    #[serde(default)]
    pub nameservers: Vec<Nameserver>,
    /// The SOA contact and NS that public askers see for this space's synthesized zones.
    #[serde(default)]
    pub public: Public,
    /// What trusted askers get for names under `domain` that no space lists.
    #[serde(default)]
    pub unlisted: Unlisted,
    /// RFC 1035 zone files, relative to this file.
    #[serde(default)]
    pub zones: Vec<ZoneEntry>,
    /// The space's apps.
    #[serde(default)]
    pub apps: Vec<App>,
    /// Secondary servers that replicate one of this space's views by zone transfer.
    #[serde(default)]
    pub secondaries: Vec<Secondary>,
}

/// A secondary server (Knot, BIND, NSD) that follows one audience's zones by AXFR/IXFR.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secondary {
    /// Its name, for logs.
    pub name: String,
    /// Its addresses, `ip` or `ip:port`: its transfer requests must come from one of them, and
    /// NOTIFY goes to each (port 53 unless given).
    pub addresses: Vec<String>,
    /// Where NOTIFY goes instead, `ip` or `ip:port`, when the secondary listens elsewhere than
    /// it sends from (a multi-homed host, NAT).
    pub notify: Option<Vec<String>>,
    /// The TSIG key that signs its requests and our answers.
    pub key: Key,
    /// What it replicates: `space` (what the space's own network sees), `peer:<name>` (what
    /// that peer sees) or `public` (what askers no space trusts see).
    pub audience: String,
}

/// A TSIG key (RFC 8945) whose secret sits in a file of its own, never in the space file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// The key's name, as both sides know it.
    pub name: String,
    /// `hmac-sha256` (the default), `hmac-sha384` or `hmac-sha512`.
    pub algorithm: Option<String>,
    /// The file with the base64 secret, relative to the space file: the secret alone, or the
    /// output of BIND's `tsig-keygen` or Knot's `keymgr -t`.
    pub file: String,
}

/// A trusted network outside the space.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's name, which apps' `allow` lists refer to.
    pub name: String,
    /// The peer's CIDRs (IPv4 or IPv6).
    pub cidrs: Vec<String>,
}

/// The router endpoints of a space.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// Internal endpoints: the A/AAAA answers for trusted askers.
    #[serde(default)]
    pub private: Vec<String>,
    /// Public endpoints, answered for standard apps only.
    #[serde(default)]
    pub public: Vec<String>,
}

/// A name server of the zones a space sees.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nameserver {
    /// The server's host name.
    pub name: String,
    /// Its address, served as glue.
    pub ip: Option<String>,
}

/// The public identity of a space's synthesized zones (its app domain, as seen for its
/// standard apps, and their custom-domain apexes): never the private nameservers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Public {
    /// Public NS (and glue) of those zones; the first is the SOA MNAME. When absent, the SOA
    /// names the zone's apex and NS queries get NODATA.
    #[serde(default)]
    pub nameservers: Vec<Nameserver>,
    /// The SOA RNAME, e.g. `hostmaster.example.net`; `hostmaster.<apex>` when absent.
    pub hostmaster: Option<String>,
    /// The serial public askers see, bumped only when public data changes; the space's
    /// `serial` when absent.
    pub serial: Option<u32>,
}

/// Names under the space's app domain that no space lists (`some-public-app.herokuapp.com`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unlisted {
    /// What trusted askers get for them.
    #[serde(default)]
    pub policy: Policy,
    /// For `forward`: the resolvers or servers that answer the domain publicly, `ip` or
    /// `ip:port` (port 53 when absent).
    #[serde(default)]
    pub upstreams: Vec<String>,
}

/// What a trusted asker gets for a name under an app domain that no space lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Relay the query to `upstreams` and return their answer.
    Forward,
    /// REFUSED, so the asker's resolver falls back to its own resolution.
    Refused,
    /// NXDOMAIN: the domain is wholly ours (the default).
    #[default]
    Nxdomain,
}

/// Who a zone file is served to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// Askers trusted by the space (its network and peers).
    #[default]
    Trusted,
    /// Every other asker.
    Public,
}

/// A zone file the space serves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneEntry {
    /// The zone file's path, relative to the space file.
    pub file: String,
    /// Who sees this file's data.
    #[serde(default)]
    pub audience: Audience,
}

/// An app of the space.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app's name, `[a-z][a-z0-9-]{2,29}`, unique per domain.
    pub name: String,
    /// `true` (the default): reachable only from inside; `false`: a standard, public app.
    #[serde(default = "default_true")]
    pub internal_routing: bool,
    /// Only these peers may resolve the app; the space itself always may.
    pub allow: Option<Vec<String>>,
    /// Custom domains, exact (`api.example.com`) or wildcard (`*.tools.example.com`).
    #[serde(default)]
    pub domains: Vec<String>,
    /// The certificate the router presents for the custom domains.
    pub tls: Option<Tls>,
    /// The app's dynos.
    #[serde(default)]
    pub dynos: Vec<Dyno>,
}

fn default_true() -> bool {
    true
}

/// A certificate and key pair in PEM files, relative to the space file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain.
    pub cert: String,
    /// The private key.
    pub key: String,
}

/// One dyno of an app.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dyno {
    /// `<process>.<n>`, e.g. `web.1`.
    pub name: String,
    /// The dyno's private address.
    pub ip: String,
    /// The port it listens on; required for `web` dynos.
    pub port: Option<u16>,
}
