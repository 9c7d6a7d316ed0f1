//! The DNS server: the pure answer function and the UDP/TCP loops around it.

pub mod answer;
mod fast;
pub mod forward;
pub mod resolve;
pub mod server;
mod udp;
