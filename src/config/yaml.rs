//! A fast reader for the plain block style that space files are written in, beside serde_yaml.
//!
//! serde_yaml reads about 20 MB/s and holds every event of a document in memory before the
//! first field is filled: a million-app space file took 4.7 s and 2.3 GB. Space files use a
//! small part of YAML (block mappings and sequences, one-line flow collections, plain and simple
//! quoted scalars), so [`from_str`] reads exactly that part into a borrowed tree and fills the
//! serde model from it, like the DNS fast path beside the reference answer: whatever it is not
//! sure of (tabs, anchors, tags, escapes, multi-line scalars, a number written as `0x1F`, any
//! error at all) makes it give up with `None`, and the caller parses the text with serde_yaml,
//! which then gives the answer or the error with its position. It never accepts a document that
//! serde_yaml reads differently: `load.rs` tests that on every fixture and thousands of mutants,
//! and the `load` fuzz target checks it on arbitrary input.

use serde::Deserialize;
use serde::de::value::{Error, StrDeserializer};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Reads `text` as a `T`, or `None` when the text leaves the subset or does not fit `T`.
pub fn from_str<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
    let mut lines = Lines::new(text)?;
    let root = match lines.peek() {
        Some(line) if line.indent == 0 => block_map(&mut lines, 0).ok()?,
        _ => return None,
    };
    if lines.peek().is_some() {
        return None;
    }
    T::deserialize(root).ok()
}

/// A YAML node as written, borrowing the text.
#[derive(Debug)]
enum Node<'a> {
    /// A key with no value (`router:` and nothing below it).
    Empty,
    /// A plain scalar.
    Plain(&'a str),
    /// A single- or double-quoted scalar without escapes.
    Quoted(&'a str),
    Seq(Vec<Node<'a>>),
    Map(Vec<(&'a str, Node<'a>)>),
}

/// Gives up: the text leaves the subset.
#[derive(Debug)]
struct Unsure;

type Parsed<'a> = Result<Node<'a>, Unsure>;

/// One line that holds more than a comment: its indentation and its content without the
/// comment and trailing spaces.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

/// The significant lines of a document, one looked ahead.
struct Lines<'a> {
    rest: &'a str,
    next: Option<Line<'a>>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Option<Lines<'a>> {
        // Tabs, carriage returns, a byte-order mark, directives and document markers are all
        // legal YAML with rules of their own, and characters outside YAML's printable set
        // (C0 and C1 controls, DEL, U+FFFE, U+FFFF; even in a comment) make the file invalid:
        // serde_yaml reads those files, and reports the error.
        let bytes = text.as_bytes();
        let unsure = bytes.iter().enumerate().any(|(i, &b)| match b {
            b'\n' => false,
            0..=0x1f | 0x7f => true,
            0xc2 => bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)),
            0xef => {
                bytes.get(i + 1) == Some(&0xbf) && matches!(bytes.get(i + 2), Some(0xbe | 0xbf))
            }
            _ => false,
        });
        if unsure || text.starts_with('\u{feff}') {
            return None;
        }
        let mut lines = Lines {
            rest: text,
            next: None,
        };
        lines.advance().ok()?;
        Some(lines)
    }

    fn peek(&self) -> Option<Line<'a>> {
        self.next
    }

    /// Replaces the line looked at: a sequence item `- key: v` continues as the mapping line
    /// `key: v` at the item's content column.
    fn replace(&mut self, line: Line<'a>) {
        self.next = Some(line);
    }

    fn advance(&mut self) -> Result<(), Unsure> {
        self.next = None;
        while !self.rest.is_empty() {
            let (raw, rest) = self.rest.split_once('\n').unwrap_or((self.rest, ""));
            self.rest = rest;
            let content = raw.trim_start_matches(' ');
            let indent = raw.len() - content.len();
            let text = match content.find('#') {
                Some(0) => "",
                Some(i) if content.as_bytes()[i - 1] == b' ' => &content[..i],
                Some(_) => return Err(Unsure),
                None => content,
            }
            .trim_end_matches(' ');
            if text.is_empty() {
                continue;
            }
            if text.starts_with(['%', '&', '*', '!', '|', '>', '?', '@', '`'])
                || text.starts_with("---")
                || text.starts_with("...")
            {
                return Err(Unsure);
            }
            self.next = Some(Line { indent, text });
            break;
        }
        Ok(())
    }
}

/// A block mapping whose keys sit at column `indent`.
fn block_map<'a>(lines: &mut Lines<'a>, indent: usize) -> Parsed<'a> {
    let mut entries = Vec::new();
    while let Some(line) = lines.peek() {
        if line.indent < indent {
            break;
        }
        if line.indent > indent || is_item(line.text) {
            return Err(Unsure);
        }
        let (key, value) = line.text.split_once(':').ok_or(Unsure)?;
        if !is_key(key) {
            return Err(Unsure);
        }
        let value = match value.strip_prefix(' ') {
            Some(value) => {
                lines.advance()?;
                inline(value.trim_start_matches(' '))?
            }
            None if value.is_empty() => {
                lines.advance()?;
                nested(lines, indent)?
            }
            None => return Err(Unsure),
        };
        entries.push((key, value));
    }
    Ok(Node::Map(entries))
}

/// The value of `key:` with nothing after it: a block below it, a sequence at its own column,
/// or nothing.
fn nested<'a>(lines: &mut Lines<'a>, indent: usize) -> Parsed<'a> {
    match lines.peek() {
        Some(next) if next.indent > indent && is_item(next.text) => block_seq(lines, next.indent),
        Some(next) if next.indent > indent => block_map(lines, next.indent),
        Some(next) if next.indent == indent && is_item(next.text) => block_seq(lines, indent),
        _ => Ok(Node::Empty),
    }
}

/// A block sequence whose `-` sit at column `indent`.
fn block_seq<'a>(lines: &mut Lines<'a>, indent: usize) -> Parsed<'a> {
    let mut items = Vec::new();
    while let Some(line) = lines.peek() {
        if line.indent < indent || (line.indent == indent && !is_item(line.text)) {
            break;
        }
        if line.indent > indent {
            return Err(Unsure);
        }
        let after = &line.text[1..];
        let content = after.trim_start_matches(' ');
        if content.is_empty() || is_item(content) {
            return Err(Unsure);
        }
        let item = if starts_mapping(content) {
            let column = indent + line.text.len() - content.len();
            lines.replace(Line {
                indent: column,
                text: content,
            });
            block_map(lines, column)?
        } else {
            lines.advance()?;
            inline(content)?
        };
        items.push(item);
    }
    Ok(Node::Seq(items))
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// Whether an item's content is `key: ...` or `key:` (a block mapping) rather than a scalar.
fn starts_mapping(content: &str) -> bool {
    !content.starts_with(['{', '[', '"', '\''])
        && (content.ends_with(':') || content.contains(": "))
}

/// A key: what space files use, nothing YAML would read as anything but that string.
fn is_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !key.starts_with('-')
}

/// A value written on the key's or the item's line.
fn inline(text: &str) -> Parsed<'_> {
    if text.starts_with(['{', '[']) {
        let mut flow = Flow { text, at: 0 };
        let node = flow.node()?;
        return if flow.at == text.len() {
            Ok(node)
        } else {
            Err(Unsure)
        };
    }
    if let Some(quoted) = quoted(text)
        && quoted.len() + 2 == text.len()
    {
        return Ok(Node::Quoted(quoted));
    }
    plain(text, false).map(Node::Plain)
}

/// The inside of a quoted scalar at the start of `text`, when it needs no unescaping.
fn quoted(text: &str) -> Option<&str> {
    let quote = text.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = &text[1..];
    let end = inner.find(quote)?;
    let inside = &inner[..end];
    (!inside.contains(['\\', '"', '\'', '\n'])).then_some(inside)
}

/// A plain scalar made only of characters that mean nothing else in YAML; in a flow collection
/// `:` is left out too (its rules there differ between YAML versions).
fn plain(text: &str, flow: bool) -> Result<&str, Unsure> {
    let first_ok = text
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'/');
    let rest_ok = text.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/') || (b == b':' && !flow)
    });
    // A `:` that ends a scalar would start a mapping value.
    if first_ok && rest_ok && !text.ends_with(':') {
        Ok(text)
    } else {
        Err(Unsure)
    }
}

/// A one-line flow collection: `{name: vpn, cidrs: [10.0.0.0/8]}`.
struct Flow<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Flow<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn spaces(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start_matches(' ').len();
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.rest().starts_with(c);
        if found {
            self.at += 1;
        }
        found
    }

    fn node(&mut self) -> Parsed<'a> {
        if self.eat('[') {
            self.items(']', |f| f.node()).map(Node::Seq)
        } else if self.eat('{') {
            self.items('}', |f| {
                let key = f.token()?;
                if !is_key(key) || !f.eat(':') || !f.eat(' ') {
                    return Err(Unsure);
                }
                f.spaces();
                Ok((key, f.node()?))
            })
            .map(Node::Map)
        } else if let Some(inside) = quoted(self.rest()) {
            self.at += inside.len() + 2;
            Ok(Node::Quoted(inside))
        } else {
            plain(self.token()?, true).map(Node::Plain)
        }
    }

    /// The text up to the next flow indicator, `:` or space.
    fn token(&mut self) -> Result<&'a str, Unsure> {
        let rest = self.rest();
        let end = rest.find([',', ']', '}', ':', ' ']).unwrap_or(rest.len());
        self.at += end;
        Ok(&rest[..end])
    }

    /// Comma-separated items up to `close`; no trailing comma.
    fn items<T>(
        &mut self,
        close: char,
        mut item: impl FnMut(&mut Self) -> Result<T, Unsure>,
    ) -> Result<Vec<T>, Unsure> {
        let mut items = Vec::new();
        self.spaces();
        if self.eat(close) {
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            self.spaces();
            if self.eat(close) {
                return Ok(items);
            }
            if !self.eat(',') {
                return Err(Unsure);
            }
            self.spaces();
        }
    }
}

/// Fills serde types from a [`Node`] the way serde_yaml 0.9 does for the same YAML, or fails.
impl<'de> de::Deserializer<'de> for Node<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        // What serde_yaml infers for an untyped scalar has many rules; the model never asks.
        Err(de::Error::custom("untyped value"))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Plain("true" | "True" | "TRUE") => visitor.visit_bool(true),
            Node::Plain("false" | "False" | "FALSE") => visitor.visit_bool(false),
            _ => Err(de::Error::custom("not a boolean")),
        }
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Plain(s)
                if s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0')) =>
            {
                visitor.visit_u64(s.parse().map_err(de::Error::custom)?)
            }
            _ => Err(de::Error::custom("not a decimal number")),
        }
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Plain(s) | Node::Quoted(s) => visitor.visit_borrowed_str(s),
            _ => Err(de::Error::custom("not a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Empty | Node::Plain("null" | "Null" | "NULL") => visitor.visit_none(),
            node => visitor.visit_some(node),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Seq(items) => visitor.visit_seq(Items(items.into_iter())),
            _ => Err(de::Error::custom("not a sequence")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Map(entries) => visitor.visit_map(Entries(entries.into_iter(), None)),
            Node::Empty => visitor.visit_map(Entries(Vec::new().into_iter(), None)),
            _ => Err(de::Error::custom("not a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::Plain(s) => visitor.visit_enum(StrDeserializer::<Error>::new(s)),
            _ => Err(de::Error::custom("not a unit variant")),
        }
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u128 f32 f64 char bytes byte_buf unit unit_struct
        newtype_struct tuple tuple_struct ignored_any
    }
}

struct Items<'a>(std::vec::IntoIter<Node<'a>>);

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.next().map(|n| seed.deserialize(n)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries<'a>(std::vec::IntoIter<(&'a str, Node<'a>)>, Option<Node<'a>>);

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.0.next() else {
            return Ok(None);
        };
        self.1 = Some(value);
        seed.deserialize(StrDeserializer::<Error>::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.1.take().ok_or_else(|| de::Error::custom("no value"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::from_str;
    use crate::config::model::SpaceFile;

    fn serde_yaml(text: &str) -> Option<SpaceFile> {
        serde_yaml::from_str(text).ok()
    }

    /// Every space file in the repository (the example and the test fixtures).
    fn fixtures() -> Vec<(String, String)> {
        let root = env!("CARGO_MANIFEST_DIR");
        let dirs = ["zones", "tests/data/two-spaces", "tests/data/conformance"];
        let mut files = Vec::new();
        for dir in dirs {
            for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    files.push((path.display().to_string(), text));
                }
            }
        }
        assert!(files.len() >= 4, "{files:?}");
        files
    }

    #[test]
    fn real_space_files_take_the_fast_path_and_read_as_serde_yaml_reads_them() {
        for (path, text) in fixtures() {
            let fast = from_str::<SpaceFile>(&text);
            assert!(fast.is_some(), "{path} left the fast path");
            assert_eq!(fast, serde_yaml(&text), "{path}");
        }
    }

    /// Documents where a reader of less than YAML could go wrong. The fast path may give up on
    /// any of them; what it does read must be what serde_yaml reads.
    #[test]
    fn tricky_documents_read_as_serde_yaml_reads_them_or_fall_back() {
        let head = "space: s\nnetwork: 10.0.0.0/8\n";
        let cases = [
            "apps:\n- name: abc\n  dynos: []\n",
            "apps:\n  - name: abc\n    internal_routing: no\n",
            "apps:\n  - name: abc\n    internal_routing: False\n",
            "apps:\n  - name: abc\n    dynos:\n    - {name: web.1, ip: 10.0.0.1, port: 0x10}\n",
            "apps:\n  - name: abc\n    dynos:\n    - {name: web.1, ip: 10.0.0.1, port: 010}\n",
            "apps:\n  - name: abc\n    dynos:\n    - {name: web.1, ip: 10.0.0.1, port: 70000}\n",
            "apps:\n  - name: abc\n    dynos:\n    - {name: web.1, ip: fd00::1, port: 80}\n",
            "apps:\n  - name: abc\n    dynos:\n    - name: web.1\n      ip: fd00::1\n      port: 80\n",
            "apps:\n  - name: abc\n    domains: [\"*.x.example.com\", 'y.example.com']\n",
            "apps:\n  - name: abc\n    domains: [\"*.x.example.com\" , y.example.com ]\n",
            "apps:\n  - name: abc\n    domains:\n      - \"a#b\"\n",
            "apps:\n  - name: abc # a comment\n    allow:\n",
            "apps:\n  - name: abc\n    allow: []\n",
            "apps:\n  - name: abc\n    allow: null\n",
            "apps:\n  - name: abc\n    allow: ~\n",
            "apps:\n  - name: abc:\n",
            "apps:\n  - name: a:b\n",
            "apps:\n  - name: abc\n    tls:\n",
            "apps:\n  - name: null\n",
            "apps:\n  - name: 123\n",
            "apps:\n  - name: abc\n  - name: abd\n    dynos:\n",
            "apps:\n  - name: abc\n    name: abd\n",
            "apps:\n  - name: abc\n    typo: 1\n",
            "apps:\n  - name: abc\n    more\n",
            "apps:\n  - name: abc\n      deeper: 1\n",
            "apps:\n  -  name: abc\n     internal_routing: true\n",
            "apps:\n  - - name: abc\n",
            "apps: [{name: abc, dynos: [{name: web.1, ip: 10.0.0.1, port: 80}]}]\n",
            "apps: [{name: abc,}]\n",
            "apps: [{name: abc}, ]\n",
            "apps: [{name: abc}\n",
            "apps: [{name:abc}]\n",
            "unlisted: {policy: refused}\n",
            "unlisted: {policy: 'refused'}\n",
            "unlisted: {policy: Refused}\n",
            "unlisted: {policy: forward, upstreams: [127.0.0.53, 127.0.0.54:5353]}\n",
            "unlisted:\n  policy: forward\n  upstreams:\n  - 127.0.0.53:53\n",
            "router:\n",
            "router: {}\n",
            "ttl: 60\n",
            "ttl: +60\n",
            "ttl: 6_0\n",
            "ttl: 1e3\n",
            "ttl:\n",
            "domain: herokuapp.com.\n",
            "domain: \"herokuapp.com\" # quoted\n",
            "peers:\n- name: vpn\n  cidrs: [10.1.0.0/16]\n",
            "peers: &p\n  - {name: vpn, cidrs: [10.1.0.0/16]}\n",
            "peers:\n  - {name: vpn, cidrs: [fd00::/64]}\n",
            "---\napps: []\n",
            "apps: []\n...\n",
            "apps: !!seq []\n",
            "apps: |\n  x\n",
        ];
        let mut fast_hits = 0;
        for case in cases {
            let text = format!("{head}{case}");
            if let Some(fast) = from_str::<SpaceFile>(&text) {
                fast_hits += 1;
                assert_eq!(Some(fast), serde_yaml(&text), "{text}");
            }
        }
        assert!(
            fast_hits >= 20,
            "only {fast_hits} of {} read fast",
            cases.len()
        );
    }

    /// Thousands of mutants of the real files (a byte deleted, a YAML-meaningful byte inserted,
    /// a line doubled or re-indented): whatever the fast path reads, serde_yaml reads the same.
    #[test]
    fn mutated_space_files_read_as_serde_yaml_reads_them_or_fall_back() {
        const BYTES: &[u8] = b" :-#\"'[]{},\n*&!|>~%?0a.\t/";
        let mut seed: u64 = 0x5eed_1a2b_3c4d_5e6f;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut fast_hits, mut total) = (0, 0);
        for (path, text) in fixtures() {
            for _ in 0..1500 {
                let mut bytes = text.clone().into_bytes();
                for _ in 0..1 + next(3) {
                    let at = next(bytes.len());
                    match next(4) {
                        0 => {
                            bytes.remove(at);
                        }
                        1 => bytes.insert(at, BYTES[next(BYTES.len())]),
                        2 => {
                            let start = bytes[..at].iter().rposition(|b| *b == b'\n');
                            let start = start.map_or(0, |s| s + 1);
                            bytes.insert(start, b' ');
                        }
                        _ => {
                            let start = bytes[..at].iter().rposition(|b| *b == b'\n');
                            let start = start.map_or(0, |s| s + 1);
                            let end = (bytes[at..].iter().position(|b| *b == b'\n'))
                                .map_or(bytes.len(), |e| at + e + 1);
                            let line = bytes[start..end].to_vec();
                            bytes.splice(start..start, line);
                        }
                    }
                }
                let Ok(mutant) = String::from_utf8(bytes) else {
                    continue;
                };
                total += 1;
                if let Some(fast) = from_str::<SpaceFile>(&mutant) {
                    fast_hits += 1;
                    assert_eq!(Some(fast), serde_yaml(&mutant), "{path} mutated:\n{mutant}");
                }
            }
        }
        // The test means something only if many mutants stay inside the fast path.
        assert!(fast_hits * 5 > total, "{fast_hits} of {total} read fast");
    }
}
