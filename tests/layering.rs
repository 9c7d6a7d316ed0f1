//! Enforces the module table of STYLE.md §2: no file under `src/` names a crate or spaceroute
//! module that its row forbids, in a `use` (grouped ones flattened) or inline. Comments and the
//! `#[cfg(test)]` module at the end of a file are not checked.

use std::path::Path;

const SOCKETS: &str = "std::net::UdpSocket std::net::TcpListener std::net::TcpStream socket2";
/// What lib.rs promises of `access`, `snapshot` and `dns::answer`: pure, no clock, no logging.
const PURE: &str = "tokio hyper rustls notify std::time tracing log";

/// (file or folder under src/, the path prefixes it must not name).
#[rustfmt::skip]
const RULES: &[(&str, &[&str])] = &[
    ("config/", &["crate::access crate::snapshot crate::dns crate::router crate::reload crate::metrics", "tokio hyper rustls notify tracing", SOCKETS]),
    ("access.rs", &["crate super hickory_proto", PURE, SOCKETS]),
    ("admission.rs", &["crate::config crate::snapshot crate::dns crate::router crate::reload crate::metrics", SOCKETS]),
    ("snapshot/", &["crate::dns crate::router crate::reload crate::metrics crate::config::validate", "tokio hyper notify", SOCKETS]),
    ("dns/answer.rs", &["crate::config crate::dns::server super::server crate::router crate::reload crate::metrics", PURE, SOCKETS]),
    ("dns/fast.rs", &["crate::config crate::dns::server super::server crate::router crate::reload crate::metrics", PURE, SOCKETS]),
    ("dns/resolve.rs", &["crate::config crate::dns::server super::server crate::router crate::reload crate::metrics", PURE, SOCKETS]),
    ("dns/server.rs", &["crate::config crate::reload crate::router"]),
    ("dns/udp.rs", &["crate::config crate::reload crate::router"]),
    ("explain.rs", &["crate::config::load crate::reload crate::router crate::dns::server crate::metrics", PURE, SOCKETS]),
    ("dns/wire.rs", &["crate", PURE, SOCKETS]),
    ("dns/cookie.rs", &["crate", "tokio hyper rustls notify std::time tracing", SOCKETS]),
    ("dns/xfr.rs", &["crate::config crate::dns::server super::server crate::router crate::reload crate::metrics", PURE, SOCKETS]),
    ("dns/tsig.rs", &["crate::config crate::dns::server crate::router crate::reload crate::metrics", PURE, SOCKETS]),
    ("dns/rrl.rs", &["crate", "tokio hyper rustls notify tracing", SOCKETS]),
    ("dns/forward.rs", &["crate::config crate::snapshot crate::reload crate::router crate::metrics"]),
    ("router/", &["crate::config crate::dns crate::reload"]),
    ("reload/", &["crate::dns crate::router", SOCKETS]),
    ("metrics.rs", &["crate::config crate::snapshot crate::dns crate::router crate::reload"]),
];

/// Every path a source names outside comments and tests: `use` trees flattened, inline `a::b`.
fn paths(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or("");
    let code: Vec<&str> = (code.lines())
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect();
    let code = code.join("\n");
    let mut out = Vec::new();
    for (i, _) in code.match_indices("use ") {
        if !code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            out.extend(flatten(code[i + 4..].split(';').next().unwrap_or("")));
        }
    }
    let tokens = code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'));
    out.extend(
        tokens
            .filter(|t| t.contains("::"))
            .map(|t| t.trim_start_matches(':').into()),
    );
    out
}

/// Flattens one use tree: `a::{b, c::{d as e}}` gives `a::b` and `a::c::d`.
fn flatten(tree: &str) -> Vec<String> {
    let (mut out, mut stack, mut item, mut alias) =
        (vec![], vec![String::new()], String::new(), false);
    for c in tree.chars() {
        if matches!(c, '{' | ',' | '}') {
            let path = format!("{}{}", stack[stack.len() - 1], std::mem::take(&mut item));
            alias = false;
            match c {
                '{' => stack.push(path),
                '}' => {
                    out.push(path);
                    stack.pop();
                }
                _ => out.push(path),
            }
        } else if c.is_whitespace() {
            alias = !item.is_empty(); // after the name: ` as x`
        } else if !alias {
            item.push(c);
        }
    }
    out.push(item);
    out
}

#[test]
fn modules_use_only_what_style_section_2_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (mut dirs, mut files) = (vec![src.clone()], Vec::new());
    while let Some(dir) = dirs.pop() {
        for path in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
            if path.is_dir() {
                dirs.push(path)
            } else {
                files.push(path)
            }
        }
    }
    let (mut checked, mut broken) = (0, Vec::new());
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let Some((_, rule)) = RULES.iter().find(|(at, _)| rel.starts_with(at)) else {
            continue;
        };
        checked += 1;
        for path in paths(&std::fs::read_to_string(&file).unwrap()) {
            let hit = |f: &&str| path == *f || path.starts_with(&format!("{f}::"));
            if let Some(f) = rule.iter().flat_map(|r| r.split_whitespace()).find(hit) {
                broken.push(format!("src/{rel}: {path} (forbidden: {f})"));
            }
        }
    }
    assert!(
        checked >= 8,
        "only {checked} files checked: has src/ moved?"
    );
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_scan_sees_grouped_uses_and_inline_paths_but_not_comments_or_tests() {
    let source = "use std::{net::IpAddr, time::{Duration as D, Instant}};\n// hyper::Body\nfn f() { tokio::spawn(crate::dns::x()); }\n#[cfg(test)]\nuse hyper::Body;\n";
    let found = paths(source);
    for want in [
        "std::net::IpAddr",
        "std::time::Duration",
        "std::time::Instant",
        "tokio::spawn",
        "crate::dns::x",
    ] {
        assert!(found.iter().any(|p| p == want), "{want} in {found:?}");
    }
    assert!(!found.iter().any(|p| p.starts_with("hyper")), "{found:?}");
}
