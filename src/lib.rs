//! spaceroute: a split-horizon authoritative DNS server and HTTP router for private spaces.
//!
//! Data flows one way: `config` (load, validate) → `snapshot::compile` → an immutable
//! [`snapshot::Snapshot`] behind one `ArcSwap` → `dns::server` and `router`; `reload` is the
//! only writer of that `ArcSwap`, and `metrics` counts what the servers do. `admission` shares
//! connection capacity fairly between sources, for the router and DNS over TCP alike.
//! `access`, `snapshot` and `dns::answer` (with `dns::resolve` and the fast path) are pure: no
//! sockets, no tokio, no clock, no logging;
//! `tests/layering.rs` holds the modules to that.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod access;
pub mod admission;
pub mod config;
pub mod dns;
pub mod explain;
pub mod metrics;
pub mod reload;
pub mod router;
pub mod snapshot;
