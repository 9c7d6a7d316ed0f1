//! The DNS server: the pure answer function and the UDP/TCP loops around it, with the guards
//! a reply passes on its way out (cookies, rate limits).

pub mod answer;
pub mod cookie;
mod fast;
pub mod forward;
mod notify;
pub mod resolve;
pub mod rrl;
pub mod server;
pub mod tsig;
mod udp;
pub mod wire;
pub mod xfr;
